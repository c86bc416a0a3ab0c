//! The end-to-end suites of Baton (see the `[[test]]` targets): no library code lives here;
//! the shared harness is `baton-testkit`.
