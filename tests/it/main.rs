mod docs;
mod harness_smoke;
mod run;
mod status;
mod support;
mod util;
