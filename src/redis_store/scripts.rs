//! The Lua scripts, each with the shared helpers prepended.

use std::sync::OnceLock;

use redis::Script;

macro_rules! script {
    ($name:ident, $file:literal) => {
        pub(super) fn $name() -> &'static Script {
            static S: OnceLock<Script> = OnceLock::new();
            S.get_or_init(|| {
                Script::new(concat!(include_str!("lua/common.lua"), include_str!($file)))
            })
        }
    };
}

script!(acquire, "lua/acquire.lua");
script!(cancel, "lua/cancel.lua");
script!(cancel_token, "lua/cancel_token.lua");
script!(correct, "lua/correct.lua");
script!(gate, "lua/gate.lua");
script!(learn, "lua/learn.lua");
