//! The Lua, in `lua/`: one function per script, of (KEYS, ARGV), after the
//! shared helpers of `common.lua`.
//!
//! Sent two ways. Preferably as one Redis function library (Redis 7 and
//! later), loaded once per server and called with `FCALL`: the helpers
//! are then defined once, not on every call (an `EVAL` runs its whole text
//! each time, which costs a script some 10 µs of Redis's one thread before
//! it does anything). On a server without functions (or where the library
//! cannot be loaded), each script goes as `EVALSHA` of the helpers, the
//! function and a call to it. The library's name carries a hash of its
//! code, so processes of different versions never replace each other's.

use std::sync::OnceLock;

use redis::{Cmd, Script, ScriptInvocation, ToRedisArgs};

/// One script: its function's name in the library, and the same code as
/// a plain script for servers without functions.
pub(super) struct Lua {
    name: &'static str,
    function: OnceLock<String>,
    script: OnceLock<Script>,
    file: &'static str,
}

const COMMON: &str = include_str!("lua/common.lua");

macro_rules! lua {
    ($($name:ident),*) => {
        $(
            pub(super) fn $name() -> &'static Lua {
                static S: Lua = Lua {
                    name: stringify!($name),
                    function: OnceLock::new(),
                    script: OnceLock::new(),
                    file: include_str!(concat!("lua/", stringify!($name), ".lua")),
                };
                &S
            }
        )*
        /// Every script, in the order the library defines them.
        fn all() -> [&'static Lua; 6] {
            [$($name()),*]
        }
    };
}

lua!(acquire, cancel, cancel_token, correct, gate, learn);

/// The function library: its name (with a hash of its code) and text.
pub(super) struct Library {
    pub(super) name: String,
    pub(super) code: String,
}

pub(super) fn library() -> &'static Library {
    static L: OnceLock<Library> = OnceLock::new();
    L.get_or_init(|| {
        let mut body = String::from(COMMON);
        for s in all() {
            body.push_str(s.file);
        }
        // The hash of the code (SHA-1, as Redis names scripts): a changed
        // script is another library.
        let hash = Script::new(&body).get_hash()[..16].to_owned();
        let name = format!("tlr4_{hash}");
        let mut code = format!("#!lua name={name}\n{body}");
        for s in all() {
            code.push_str(&format!(
                "redis.register_function('{name}_{f}', {f})\n",
                f = s.name
            ));
        }
        Library { name, code }
    })
}

impl Lua {
    /// The function's name in the library.
    pub(super) fn function(&self) -> &str {
        self.function
            .get_or_init(|| format!("{}_{}", library().name, self.name))
    }

    /// The same code as a plain script.
    fn script(&self) -> &Script {
        self.script.get_or_init(|| {
            Script::new(&format!(
                "{COMMON}{}return {}(KEYS, ARGV)\n",
                self.file, self.name
            ))
        })
    }
}

/// One call of a script: its keys and arguments, sent as `FCALL` or, on a
/// server without functions, as `EVALSHA`.
pub(super) struct Call {
    lua: &'static Lua,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl Call {
    pub(super) fn new(lua: &'static Lua) -> Call {
        Call {
            lua,
            keys: Vec::with_capacity(12),
            args: Vec::with_capacity(24),
        }
    }

    pub(super) fn key<T: ToRedisArgs>(&mut self, key: T) -> &mut Call {
        key.write_redis_args(&mut self.keys);
        self
    }

    pub(super) fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Call {
        arg.write_redis_args(&mut self.args);
        self
    }

    /// `FCALL <function> <numkeys> <keys> <args>`.
    pub(super) fn fcall(&self) -> Cmd {
        let mut c = redis::cmd("FCALL");
        c.arg(self.lua.function())
            .arg(self.keys.len())
            .arg(&self.keys)
            .arg(&self.args);
        c
    }

    /// The same call as a script (`EVALSHA`, loading it on `NOSCRIPT`).
    pub(super) fn script(&self) -> ScriptInvocation<'static> {
        let mut inv = self.lua.script().prepare_invoke();
        for k in &self.keys {
            inv.key(k);
        }
        for a in &self.args {
            inv.arg(a);
        }
        inv
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_library_names_every_function_after_its_code() {
        let lib = library();
        assert!(lib.name.starts_with("tlr4_") && lib.name.len() == 21);
        assert!(lib.code.starts_with(&format!("#!lua name={}\n", lib.name)));
        for s in all() {
            let f = s.function();
            assert_eq!(f, format!("{}_{}", lib.name, s.name));
            assert!(lib
                .code
                .contains(&format!("register_function('{f}', {})", s.name)));
            assert!(s.script().get_hash().len() == 40);
        }
    }
}
