mod harness_smoke;
mod run;
mod support;
mod util;
