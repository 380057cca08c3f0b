//! The model names events carry, shared between requests.

use std::sync::Mutex;

use crate::key::Key;

/// How many model names are kept: more than a deployment uses; past it a
/// name is not kept (a body naming a new model each time costs its own
/// allocation, never memory that grows).
const MAX_MODELS: usize = 64;

/// The model names seen so far, each one [`Key::for_model`], so that the
/// requests for a model share one name instead of allocating their own.
#[derive(Debug, Default)]
pub(super) struct ModelNames(Mutex<Vec<Key>>);

impl ModelNames {
    /// The shared key for `model`, kept if there is room.
    pub(super) fn get(&self, model: &str) -> Key {
        let mut names = match self.0.lock() {
            Ok(names) => names,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(key) = names.iter().find(|k| k.as_str() == Some(model)) {
            return key.clone();
        }
        let key = Key::for_model(model);
        if names.len() < MAX_MODELS {
            names.push(key.clone());
        }
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_shared_and_bounded() {
        let names = ModelNames::default();
        let a = names.get("gpt-4o");
        assert_eq!(a.model(), Some("gpt-4o"));
        assert_eq!(names.get("gpt-4o"), a);
        for i in 0..2 * MAX_MODELS {
            assert_eq!(names.get(&format!("m{i}")).model(), Some(&*format!("m{i}")));
        }
        assert_eq!(names.0.lock().unwrap().len(), MAX_MODELS);
    }
}
