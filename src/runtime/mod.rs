//! The reactor: every lead and follow of a client driven by one network
//! thread, a few request workers and the callback thread, instead of a
//! thread per lead and two per follow. Designed in
//! docs/internals/fixed-threads.md; built piece by piece, and not running
//! yet: so far only its pure parts exist (`timers`), tested on their own.

pub mod timers;
