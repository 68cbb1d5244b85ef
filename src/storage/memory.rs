//! An in-memory [`Engine`]: a `BTreeMap` behind a mutex, nothing on disk.
//!
//! It is the reference model the Bitcask engine is tested against, and a
//! quick engine for tests of the layers above. It applies the same limits and
//! expiry rules as [`super::Bitcask`].

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use super::{
    Clock, Condition, Current, Effect, Engine, Expiry, Limits, Result, SetOptions, Status, Ttl,
    WriteOp, Written, decide,
};

/// An in-memory engine.
pub struct Memory {
    /// key -> (value, absolute expiry in ms). A std-like lock is right here:
    /// critical sections are short and never await.
    map: Mutex<BTreeMap<Bytes, (Bytes, Option<u64>)>>,
    /// Where "now" comes from.
    clock: Arc<dyn Clock>,
    /// Key and value size limits.
    limits: Limits,
    /// Records written, as Bitcask would count them.
    writes: Mutex<u64>,
}

impl Memory {
    /// An empty engine with the given clock and limits.
    pub fn new(clock: Arc<dyn Clock>, limits: Limits) -> Self {
        Memory {
            map: Mutex::new(BTreeMap::new()),
            clock,
            limits,
            writes: Mutex::new(0),
        }
    }

    /// The live entry for `key`, dropping it if it has expired.
    fn live<'a>(
        map: &'a mut BTreeMap<Bytes, (Bytes, Option<u64>)>,
        key: &[u8],
        now: u64,
    ) -> Option<&'a mut (Bytes, Option<u64>)> {
        if let Some((_, Some(at))) = map.get(key)
            && *at <= now
        {
            map.remove(key);
        }
        map.get_mut(key)
    }
}

impl Engine for Memory {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.limits.check_key(key)?;
        let now = self.clock.now_ms();
        Ok(Self::live(&mut self.map.lock(), key, now).map(|(v, _)| v.clone()))
    }

    fn set(&self, key: &[u8], value: Bytes, opts: SetOptions) -> Result<bool> {
        self.limits.check_key(key)?;
        self.limits.check_value(&value)?;
        let now = self.clock.now_ms();
        let mut map = self.map.lock();
        let exists = Self::live(&mut map, key, now).is_some();
        let allowed = match opts.condition {
            Condition::Always => true,
            Condition::IfAbsent => !exists,
            Condition::IfPresent => exists,
        };
        if !allowed {
            return Ok(false);
        }
        *self.writes.lock() += 1;
        match opts.expire_at_ms {
            Some(at) if at <= now => {
                map.remove(key);
            }
            at => {
                map.insert(Bytes::copy_from_slice(key), (value, at));
            }
        }
        Ok(true)
    }

    fn delete(&self, key: &[u8]) -> Result<bool> {
        self.limits.check_key(key)?;
        let now = self.clock.now_ms();
        let mut map = self.map.lock();
        let existed = Self::live(&mut map, key, now).is_some();
        if existed {
            *self.writes.lock() += 1;
            map.remove(key);
        }
        Ok(existed)
    }

    fn expire(&self, key: &[u8], expire_at_ms: u64) -> Result<bool> {
        self.limits.check_key(key)?;
        let now = self.clock.now_ms();
        let mut map = self.map.lock();
        let Some(entry) = Self::live(&mut map, key, now) else {
            return Ok(false);
        };
        *self.writes.lock() += 1;
        if expire_at_ms <= now {
            map.remove(key);
        } else {
            entry.1 = Some(expire_at_ms);
        }
        Ok(true)
    }

    fn write(&self, key: &[u8], op: WriteOp) -> Result<Written> {
        self.limits.check_key(key)?;
        if let Some(v) = op.value() {
            self.limits.check_value(v)?;
        }
        if let WriteOp::ExpireIf(_, flags) = &op {
            flags.check()?;
        }
        let now = self.clock.now_ms();
        let mut map = self.map.lock();
        let cur = Self::live(&mut map, key, now).map(|(v, at)| Current {
            value: Some(v.clone()),
            expire_at: at.unwrap_or(0),
        });
        let (effect, reply) = decide(&op, cur, now, &self.limits)?;
        if let Some(effect) = effect {
            *self.writes.lock() += 1;
            match effect {
                Effect::Put(v, at) | Effect::Reexpire(v, at) => {
                    map.insert(Bytes::copy_from_slice(key), (v, (at != 0).then_some(at)));
                }
                Effect::Delete => {
                    map.remove(key);
                }
            }
        }
        Ok(Written::new(reply, 0))
    }

    fn expiry(&self, key: &[u8]) -> Result<Expiry> {
        self.limits.check_key(key)?;
        let now = self.clock.now_ms();
        Ok(match Self::live(&mut self.map.lock(), key, now) {
            None => Expiry::Missing,
            Some((_, None)) => Expiry::Persistent,
            Some((_, Some(at))) => Expiry::At(*at),
        })
    }

    fn get_cached(&self, key: &[u8]) -> Result<Option<Option<Bytes>>> {
        self.get(key).map(Some)
    }

    fn ttl_cached(&self, key: &[u8]) -> Result<Option<Ttl>> {
        self.ttl(key).map(Some)
    }

    fn ttl(&self, key: &[u8]) -> Result<Ttl> {
        self.limits.check_key(key)?;
        let now = self.clock.now_ms();
        Ok(match Self::live(&mut self.map.lock(), key, now) {
            None => Ttl::Missing,
            Some((_, None)) => Ttl::Persistent,
            Some((_, Some(at))) => Ttl::ExpiresInMs(*at - now),
        })
    }

    fn keys(&self) -> Result<Vec<Bytes>> {
        let now = self.clock.now_ms();
        let map = self.map.lock();
        Ok(map
            .iter()
            .filter(|(_, (_, at))| at.is_none_or(|at| at > now))
            .map(|(k, _)| k.clone())
            .collect())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn status(&self) -> Result<Status> {
        Ok(Status {
            keys: self.map.lock().len() as u64,
            records_written: *self.writes.lock(),
            ..Status::default()
        })
    }
}
