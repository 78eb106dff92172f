//! Reference-counted string interner.
//!
//! Tickets carry the same few region names, attribute names and string-arg
//! values over and over; storing a `u32` per occurrence instead of a `String`
//! is most of what keeps a queued ticket small. Counting references lets a
//! long-running control plane see high-cardinality values (tags, ad-hoc args)
//! come and go without the table growing forever.

use std::collections::HashMap;

/// An interned string. Only meaningful together with the [`Interner`] that
/// issued it; symbols are reused after their last reference is released, so
/// they must never be compared across time without holding a reference.
pub(crate) type Sym = u32;

/// Never issued by the interner, so it can stand for "absent" in keys.
pub(crate) const NO_SYM: Sym = u32::MAX;

#[derive(Debug, Default)]
pub(crate) struct Interner {
    lookup: HashMap<Box<str>, Sym>,
    entries: Vec<Entry>,
    free: Vec<Sym>,
}

#[derive(Debug)]
struct Entry {
    text: Box<str>,
    refs: u32,
}

impl Interner {
    /// Takes one reference to `text`, creating the symbol if needed.
    pub(crate) fn acquire(&mut self, text: &str) -> Sym {
        if let Some(&sym) = self.lookup.get(text) {
            self.retain(sym);
            return sym;
        }
        let entry = Entry {
            text: text.into(),
            refs: 1,
        };
        let sym = match self.free.pop() {
            Some(sym) => {
                self.entries[sym as usize] = entry;
                sym
            }
            None => {
                // The top values are reserved (NO_SYM and the relaxed-pool
                // key); four billion distinct live strings is far beyond
                // anything a queue can hold anyway.
                let sym = Sym::try_from(self.entries.len()).unwrap_or(NO_SYM - 2);
                self.entries.push(entry);
                sym
            }
        };
        self.lookup.insert(text.into(), sym);
        sym
    }

    /// Takes one more reference to an already-held symbol.
    pub(crate) fn retain(&mut self, sym: Sym) {
        if let Some(entry) = self.entries.get_mut(sym as usize) {
            entry.refs = entry.refs.saturating_add(1);
        }
    }

    pub(crate) fn release(&mut self, sym: Sym) {
        let Some(entry) = self.entries.get_mut(sym as usize) else {
            return;
        };
        if entry.refs == 0 {
            return;
        }
        entry.refs -= 1;
        if entry.refs == 0 {
            let text = std::mem::take(&mut entry.text);
            self.lookup.remove(&text);
            self.free.push(sym);
        }
    }

    /// Looks a string up without taking a reference.
    pub(crate) fn get(&self, text: &str) -> Option<Sym> {
        self.lookup.get(text).copied()
    }

    pub(crate) fn resolve(&self, sym: Sym) -> &str {
        self.entries.get(sym as usize).map_or("", |e| &e.text)
    }

    #[cfg(test)]
    pub(crate) fn live(&self) -> usize {
        self.lookup.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_are_shared_and_freed() {
        let mut i = Interner::default();
        let a = i.acquire("eu");
        let b = i.acquire("eu");
        assert_eq!(a, b);
        assert_eq!(i.resolve(a), "eu");
        i.release(a);
        assert_eq!(i.get("eu"), Some(a));
        i.release(b);
        assert_eq!(i.get("eu"), None);
        assert_eq!(i.live(), 0);
        let c = i.acquire("us");
        assert_eq!(c, a, "freed symbols are reused");
        assert_eq!(i.resolve(c), "us");
    }
}
