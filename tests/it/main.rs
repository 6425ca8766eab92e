mod docs;
mod faults;
mod harness_smoke;
mod random;
mod run;
mod status;
mod support;
mod util;
