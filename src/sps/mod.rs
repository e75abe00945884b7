//! SPS — LLVM's Simple Packed Serialization — and [`SetupInfo`], the
//! payload of the executor's `Setup` message.
//!
//! SPS as in LLVM's `SimplePackedSerialization.h`: integers are
//! little-endian and fixed width, `bool` is one byte (0 or 1), strings and
//! sequences are a `u64` element count followed by the elements, tuples are
//! their fields in order, and an `ExecutorAddr` is a `u64`.
//!
//! # The Setup encoding (protocol version 1)
//! [`SetupInfo`] is LLVM's `SimpleRemoteEPCExecutorInfo`, encoded as
//! `SPSTuple<SPSString, uint64_t, SPSSequence<SPSTuple<SPSString,
//! SPSSequence<char>>>, SPSSequence<SPSTuple<SPSString, SPSExecutorAddr>>>`
//! — target triple, page size, bootstrap map, bootstrap symbols — so an
//! LLVM controller can read an orcwire executor's `Setup`. orcwire adds
//! conventions inside those fields, not new fields:
//!
//! * bootstrap map `"orcwire.protocol"` ([`PROTOCOL_KEY`]) holds the
//!   protocol version as a little-endian `u32` ([`PROTOCOL_VERSION`]);
//! * a bootstrap symbol `name -> tag` is an executor wrapper function the
//!   controller may call (as LLVM's bootstrap symbols are);
//! * a bootstrap symbol `"orcwire.handler:" + name -> tag`
//!   ([`HANDLER_PREFIX`]) is a tag the executor will use to call the
//!   controller's handler `name`.
//!
//! Decoding treats its input as hostile: every length is checked against
//! the bytes that remain *before* anything is allocated, and entry counts
//! and name lengths are capped ([`MAX_SETUP_ENTRIES`], [`MAX_NAME_LEN`]).

/// Which protocol the executor speaks, as its `Setup` message shows.
///
/// | dialect | `Setup` payload | result kind | errors | `Hangup` payload |
/// |---|---|---|---|---|
/// | [`Llvm14`](Self::Llvm14) | triple, page size, symbols | tag 0 | empty result (LLVM sends no text) | SPS `Error` |
/// | [`Llvm15`](Self::Llvm15) | triple, page size, bootstrap map, symbols | tag 0 | as LLVM 14 | SPS `Error` |
/// | [`Orcwire`](Self::Orcwire) | as LLVM 15, plus the `"orcwire.protocol"` map entry | [`RESULT_OK`](crate::transport::RESULT_OK) / [`RESULT_ERROR`](crate::transport::RESULT_ERROR) | the message, out of band | SPS `Error` (empty accepted) |
///
/// LLVM's `SimpleRemoteEPC` (14 and later) refuses a `Result` whose tag is
/// not 0, and carries an out-of-band error as an empty result (its
/// `WrapperFunctionResult::data()` of an error has no bytes): the caller's
/// SPS decoding of the result then fails, which is how an LLVM caller sees
/// the error, without the session ending. orcwire's own dialect keeps the
/// error text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// LLVM 14's `SimpleRemoteEPCExecutorInfo`: no bootstrap map.
    Llvm14,
    /// LLVM 15 and later: with the bootstrap map.
    Llvm15,
    /// Two orcwire endpoints: LLVM 15's layout with the
    /// [`PROTOCOL_KEY`] entry, and error results that keep their text.
    Orcwire,
}

impl Dialect {
    /// Whether the peer is one of LLVM's programs.
    pub fn is_llvm(self) -> bool {
        !matches!(self, Self::Orcwire)
    }
}

/// Bootstrap-map key holding the orcwire protocol version.
pub const PROTOCOL_KEY: &str = "orcwire.protocol";
/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Prefix of bootstrap symbols that carry controller-handler tags.
pub const HANDLER_PREFIX: &str = "orcwire.handler:";
/// Most entries a decoded sequence in `Setup` may have.
pub const MAX_SETUP_ENTRIES: usize = 65_536;
/// Longest name (in bytes) a decoded `Setup` may contain.
pub const MAX_NAME_LEN: usize = 4096;
/// Longest error message (in bytes) a decoded `Error` may carry.
pub const MAX_ERROR_LEN: usize = 1 << 20;

/// Why SPS bytes could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpsError {
    /// The input ended before a value was complete.
    #[error("SPS input truncated while reading {what}: needed {needed} bytes, {available} left; the sender is broken or the message was cut")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes needed.
        needed: u64,
        /// Bytes left.
        available: usize,
    },
    /// A length or count is larger than allowed.
    #[error("SPS {what} of {len} exceeds the limit of {limit}; the sender is broken or hostile")]
    TooLong {
        /// What the length was for.
        what: &'static str,
        /// The length found.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// A string was not UTF-8.
    #[error("SPS string ({what}) is not valid UTF-8")]
    InvalidUtf8 {
        /// Which string.
        what: &'static str,
    },
    /// A `bool` byte other than 0 or 1.
    #[error("SPS bool has value {0}, expected 0 or 1")]
    InvalidBool(u8),
    /// Bytes were left after the value.
    #[error(
        "{0} unexpected bytes after the end of the SPS value; the sender uses another encoding"
    )]
    TrailingBytes(usize),
    /// The `Setup` carries no (well-formed) orcwire protocol version.
    #[error("the Setup message has no valid \"orcwire.protocol\" entry: the peer is not an orcwire executor, or is too old")]
    NoProtocolVersion,
    /// The peer speaks another protocol version.
    #[error("the executor speaks orcwire protocol {theirs} but this side speaks {ours}; run matching orcwire versions on both sides")]
    VersionMismatch {
        /// Our version.
        ours: u32,
        /// Theirs.
        theirs: u32,
    },
}

/// Appends SPS values to a byte vector.
#[derive(Debug, Default, Clone)]
pub struct SpsWriter {
    out: Vec<u8>,
}

impl SpsWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty writer with room for `n` bytes.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            out: Vec::with_capacity(n),
        }
    }

    /// Writes a `u8`.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.out.push(v);
        self
    }

    /// Writes a little-endian `u32`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Writes a little-endian `u64`.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Writes a `bool` as one byte.
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }

    /// Writes a sequence length.
    pub fn seq_len(&mut self, n: usize) -> &mut Self {
        self.u64(n as u64)
    }

    /// Writes a byte sequence (`SPSSequence<char>`): length, then bytes.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.seq_len(b.len());
        self.out.extend_from_slice(b);
        self
    }

    /// Writes a string (`SPSString`).
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    /// The bytes written.
    pub fn into_inner(self) -> Vec<u8> {
        self.out
    }
}

/// Reads SPS values from untrusted bytes.
#[derive(Debug, Clone)]
pub struct SpsReader<'a> {
    rest: &'a [u8],
}

impl<'a> SpsReader<'a> {
    /// A reader over `input`.
    pub fn new(input: &'a [u8]) -> Self {
        Self { rest: input }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8], SpsError> {
        if n > self.rest.len() as u64 {
            return Err(SpsError::Truncated {
                what,
                needed: n,
                available: self.rest.len(),
            });
        }
        let (head, tail) = self.rest.split_at(n as usize);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], SpsError> {
        let b = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        Ok(a)
    }

    /// Reads a `u8`.
    ///
    /// # Errors
    /// [`SpsError::Truncated`] at end of input.
    pub fn u8(&mut self) -> Result<u8, SpsError> {
        Ok(self.array::<1>("u8")?[0])
    }

    /// Reads a little-endian `u32`.
    ///
    /// # Errors
    /// [`SpsError::Truncated`] at end of input.
    pub fn u32(&mut self) -> Result<u32, SpsError> {
        Ok(u32::from_le_bytes(self.array("u32")?))
    }

    /// Reads a little-endian `u64`.
    ///
    /// # Errors
    /// [`SpsError::Truncated`] at end of input.
    pub fn u64(&mut self) -> Result<u64, SpsError> {
        Ok(u64::from_le_bytes(self.array("u64")?))
    }

    /// Reads a `bool`.
    ///
    /// # Errors
    /// [`SpsError::Truncated`], or [`SpsError::InvalidBool`] for bytes
    /// other than 0 and 1.
    pub fn bool(&mut self) -> Result<bool, SpsError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(SpsError::InvalidBool(b)),
        }
    }

    /// Reads a sequence length and checks that `len` elements of at least
    /// `min_elem_size` bytes each could still follow, and that `len` is at
    /// most `limit`.
    ///
    /// # Errors
    /// [`SpsError::TooLong`] or [`SpsError::Truncated`].
    pub fn seq_len(
        &mut self,
        what: &'static str,
        min_elem_size: u64,
        limit: usize,
    ) -> Result<usize, SpsError> {
        let n = self.u64()?;
        if n > limit as u64 {
            return Err(SpsError::TooLong {
                what,
                len: n,
                limit: limit as u64,
            });
        }
        let needed = n.saturating_mul(min_elem_size);
        if needed > self.rest.len() as u64 {
            return Err(SpsError::Truncated {
                what,
                needed,
                available: self.rest.len(),
            });
        }
        Ok(n as usize)
    }

    /// Reads a byte sequence of at most `limit` bytes, borrowed from the
    /// input.
    ///
    /// # Errors
    /// [`SpsError::TooLong`] or [`SpsError::Truncated`].
    pub fn bytes(&mut self, what: &'static str, limit: usize) -> Result<&'a [u8], SpsError> {
        let n = self.seq_len(what, 1, limit)?;
        self.take(n as u64, what)
    }

    /// Reads a UTF-8 string of at most `limit` bytes.
    ///
    /// # Errors
    /// As [`bytes`](Self::bytes), or [`SpsError::InvalidUtf8`].
    pub fn str(&mut self, what: &'static str, limit: usize) -> Result<&'a str, SpsError> {
        let b = self.bytes(what, limit)?;
        std::str::from_utf8(b).map_err(|_| SpsError::InvalidUtf8 { what })
    }

    /// Checks that the whole input was read.
    ///
    /// # Errors
    /// [`SpsError::TrailingBytes`] otherwise.
    pub fn finish(self) -> Result<(), SpsError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(SpsError::TrailingBytes(self.rest.len()))
        }
    }
}

/// LLVM's `SimpleRemoteEPCExecutorInfo`: what the executor tells the
/// controller in `Setup`. See the [module docs](self) for orcwire's
/// conventions inside it.
///
/// ```
/// use orcwire::sps::{SetupInfo, PROTOCOL_VERSION};
///
/// let mut info = SetupInfo::new_orcwire("x86_64-unknown-linux-gnu".into(), 4096);
/// info.bootstrap_symbols.push(("my_fn".into(), 1));
/// let (back, dialect) = SetupInfo::decode(&info.encode()).unwrap();
/// assert_eq!(back, info);
/// assert_eq!(dialect, orcwire::sps::Dialect::Orcwire);
/// assert_eq!(back.protocol_version().unwrap(), PROTOCOL_VERSION);
/// assert_eq!(back.symbol("my_fn"), Some(1));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetupInfo {
    /// The executor's target triple.
    pub target_triple: String,
    /// The executor's page size in bytes.
    pub page_size: u64,
    /// Named byte strings (LLVM's bootstrap map).
    pub bootstrap_map: Vec<(String, Vec<u8>)>,
    /// Named addresses — for orcwire, handler tags.
    pub bootstrap_symbols: Vec<(String, u64)>,
}

impl SetupInfo {
    /// A `SetupInfo` carrying this crate's protocol version.
    pub fn new_orcwire(target_triple: String, page_size: u64) -> Self {
        Self {
            target_triple,
            page_size,
            bootstrap_map: vec![(
                PROTOCOL_KEY.to_owned(),
                PROTOCOL_VERSION.to_le_bytes().to_vec(),
            )],
            bootstrap_symbols: Vec::new(),
        }
    }

    /// SPS-encodes it in orcwire's layout (LLVM 15's, with the map).
    pub fn encode(&self) -> Vec<u8> {
        self.encode_for(Dialect::Orcwire)
    }

    /// SPS-encodes it in the layout `dialect` decodes: without the
    /// bootstrap map for LLVM 14 (the map is then dropped), with it
    /// otherwise.
    pub fn encode_for(&self, dialect: Dialect) -> Vec<u8> {
        let mut w = SpsWriter::with_capacity(64 + 32 * self.bootstrap_symbols.len());
        w.str(&self.target_triple).u64(self.page_size);
        if dialect != Dialect::Llvm14 {
            w.seq_len(self.bootstrap_map.len());
            for (k, v) in &self.bootstrap_map {
                w.str(k).bytes(v);
            }
        }
        w.seq_len(self.bootstrap_symbols.len());
        for (k, a) in &self.bootstrap_symbols {
            w.str(k).u64(*a);
        }
        w.into_inner()
    }

    /// Decodes untrusted bytes in either layout and tells which dialect
    /// they are: LLVM 15's layout (with the bootstrap map) is tried first,
    /// then LLVM 14's; each must consume the input exactly, so a payload
    /// cannot pass for both. With the map, the [`PROTOCOL_KEY`] entry makes
    /// it [`Dialect::Orcwire`].
    ///
    /// # Errors
    /// An [`SpsError`] for input that is neither layout (truncated,
    /// oversized, non-UTF-8 or trailing bytes): the error of the LLVM 15
    /// reading, or of the LLVM 14 one if that got further.
    pub fn decode(input: &[u8]) -> Result<(Self, Dialect), SpsError> {
        let with_map = Self::decode_layout(input, true);
        let with_map_err = match with_map {
            Ok(info) => {
                let dialect = if info.map_value(PROTOCOL_KEY).is_some() {
                    Dialect::Orcwire
                } else {
                    Dialect::Llvm15
                };
                return Ok((info, dialect));
            }
            Err(e) => e,
        };
        match Self::decode_layout(input, false) {
            Ok(info) => Ok((info, Dialect::Llvm14)),
            Err((e14, at14)) => Err(if at14 > with_map_err.1 {
                e14
            } else {
                with_map_err.0
            }),
        }
    }

    /// One layout; on error also how far it got (to report the better
    /// of two failed readings).
    fn decode_layout(input: &[u8], with_map: bool) -> Result<Self, (SpsError, usize)> {
        let mut r = SpsReader::new(input);
        let at = |r: &SpsReader<'_>| input.len() - r.remaining();
        macro_rules! t {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(e) => return Err((e, at(&r))),
                }
            };
        }
        let target_triple = t!(r.str("target triple", MAX_NAME_LEN)).to_owned();
        let page_size = t!(r.u64());
        let mut bootstrap_map = Vec::new();
        if with_map {
            // Each map entry is at least two length prefixes.
            let n = t!(r.seq_len("bootstrap map", 16, MAX_SETUP_ENTRIES));
            bootstrap_map.reserve(n);
            for _ in 0..n {
                let k = t!(r.str("bootstrap map key", MAX_NAME_LEN)).to_owned();
                let v = t!(r.bytes("bootstrap map value", usize::MAX)).to_vec();
                bootstrap_map.push((k, v));
            }
        }
        // Each symbol is a length prefix and an address.
        let n = t!(r.seq_len("bootstrap symbols", 16, MAX_SETUP_ENTRIES));
        let mut bootstrap_symbols = Vec::with_capacity(n);
        for _ in 0..n {
            let k = t!(r.str("bootstrap symbol name", MAX_NAME_LEN)).to_owned();
            bootstrap_symbols.push((k, t!(r.u64())));
        }
        let end = at(&r);
        r.finish().map_err(|e| (e, end))?;
        Ok(Self {
            target_triple,
            page_size,
            bootstrap_map,
            bootstrap_symbols,
        })
    }

    /// The bootstrap-map value under `key`.
    pub fn map_value(&self, key: &str) -> Option<&[u8]> {
        self.bootstrap_map
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }

    /// The bootstrap symbol `name`.
    pub fn symbol(&self, name: &str) -> Option<u64> {
        self.bootstrap_symbols
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, a)| *a)
    }

    /// The orcwire protocol version the executor speaks.
    ///
    /// # Errors
    /// [`SpsError::NoProtocolVersion`] if the entry is missing or not 4
    /// bytes.
    pub fn protocol_version(&self) -> Result<u32, SpsError> {
        let v = self
            .map_value(PROTOCOL_KEY)
            .ok_or(SpsError::NoProtocolVersion)?;
        let b: [u8; 4] = v.try_into().map_err(|_| SpsError::NoProtocolVersion)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Executor wrapper functions a controller may call, `(name, tag)`,
    /// for an executor speaking `dialect`. An orcwire executor publishes
    /// exactly its registered functions. An LLVM executor publishes
    /// addresses of anything (functions and data objects such as
    /// `..._Instance` or `..._dispatch_ctx`); only its wrapper functions
    /// count ([`is_llvm_wrapper`]). Calling anything else would make
    /// LLVM's executor jump to a non-function and crash.
    pub fn functions(&self, dialect: Dialect) -> impl Iterator<Item = (&str, u64)> {
        self.bootstrap_symbols
            .iter()
            .filter(move |(k, _)| match dialect {
                Dialect::Orcwire => !k.starts_with(HANDLER_PREFIX),
                Dialect::Llvm14 | Dialect::Llvm15 => is_llvm_wrapper(k),
            })
            .map(|(k, a)| (k.as_str(), *a))
    }

    /// Controller handlers the executor will call: `(name, tag)`.
    pub fn handler_tags(&self) -> impl Iterator<Item = (&str, u64)> {
        self.bootstrap_symbols
            .iter()
            .filter_map(|(k, a)| k.strip_prefix(HANDLER_PREFIX).map(|n| (n, *a)))
    }
}

/// Whether an LLVM executor's bootstrap symbol `name` is a wrapper
/// function (as opposed to a data object such as an `..._Instance`):
/// LLVM names them `..._wrapper` (LLVM 14 and later) or `...Wrapper`
/// (LLVM 19's EH-frame registration), except the four functions of
/// LLVM 19's `ExecutorSharedMemoryMapperService`, listed here.
pub fn is_llvm_wrapper(name: &str) -> bool {
    const UNSUFFIXED: [&str; 4] = [
        "__llvm_orc_ExecutorSharedMemoryMapperService_Reserve",
        "__llvm_orc_ExecutorSharedMemoryMapperService_Initialize",
        "__llvm_orc_ExecutorSharedMemoryMapperService_Deinitialize",
        "__llvm_orc_ExecutorSharedMemoryMapperService_Release",
    ];
    name.ends_with("_wrapper") || name.ends_with("Wrapper") || UNSUFFIXED.contains(&name)
}

/// SPS-encodes an LLVM `Error` (`SPSError`): `false`, or `true` and the
/// message. The payload of a `Hangup` in every dialect.
pub fn encode_error(message: Option<&str>) -> Vec<u8> {
    let mut w = SpsWriter::new();
    match message {
        None => {
            w.bool(false);
        }
        Some(m) => {
            w.bool(true).str(m);
        }
    }
    w.into_inner()
}

/// Decodes an SPS-encoded LLVM `Error` from untrusted bytes: `None` for
/// success, the message otherwise. An empty input counts as success (an
/// orcwire peer before protocol 1.1 sent an empty `Hangup`).
///
/// # Errors
/// An [`SpsError`] for anything else than one well-formed `Error`.
pub fn decode_error(input: &[u8]) -> Result<Option<String>, SpsError> {
    if input.is_empty() {
        return Ok(None);
    }
    let mut r = SpsReader::new(input);
    let message = if r.bool()? {
        Some(r.str("error message", MAX_ERROR_LEN)?.to_owned())
    } else {
        None
    };
    r.finish()?;
    Ok(message)
}

/// This host's target triple, as LLVM spells it (for example
/// `x86_64-unknown-linux-gnu`).
pub fn host_target_triple() -> String {
    let env = if cfg!(target_env = "gnu") {
        "-gnu"
    } else if cfg!(target_env = "musl") {
        "-musl"
    } else {
        ""
    };
    format!(
        "{}-unknown-{}{}",
        std::env::consts::ARCH,
        std::env::consts::OS,
        env
    )
}

/// This host's page size in bytes (4096 if the OS will not say).
pub fn host_page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as u64
    } else {
        4096
    }
}

#[cfg(test)]
mod tests;
