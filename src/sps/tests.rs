use super::*;

fn sample() -> SetupInfo {
    let mut s = SetupInfo::new_orcwire("x86_64-unknown-linux-gnu".into(), 4096);
    s.bootstrap_map.push(("blob".into(), vec![1, 2, 3]));
    s.bootstrap_symbols.push(("f".into(), 1));
    s.bootstrap_symbols.push(("orcwire.handler:log".into(), 2));
    s.bootstrap_symbols.push(("ünïcode".into(), u64::MAX));
    s
}

#[test]
fn round_trip_and_accessors() {
    let s = sample();
    let (back, dialect) = SetupInfo::decode(&s.encode()).unwrap();
    assert_eq!(back, s);
    assert_eq!(dialect, Dialect::Orcwire);
    assert_eq!(back.protocol_version(), Ok(PROTOCOL_VERSION));
    assert_eq!(
        back.functions(Dialect::Orcwire).collect::<Vec<_>>(),
        vec![("f", 1), ("ünïcode", u64::MAX)]
    );
    assert_eq!(back.handler_tags().collect::<Vec<_>>(), vec![("log", 2)]);
    assert_eq!(back.map_value("blob"), Some(&[1u8, 2, 3][..]));
    let empty = SetupInfo::default();
    assert_eq!(
        SetupInfo::decode(&empty.encode()).unwrap(),
        (empty.clone(), Dialect::Llvm15)
    );
    assert_eq!(empty.protocol_version(), Err(SpsError::NoProtocolVersion));
}

#[test]
fn byte_exact_encoding() {
    let s = SetupInfo {
        target_triple: "ab".into(),
        page_size: 0x1000,
        bootstrap_map: vec![("k".into(), vec![9])],
        bootstrap_symbols: vec![("s".into(), 0x0102)],
    };
    let mut want = Vec::new();
    want.extend_from_slice(&2u64.to_le_bytes());
    want.extend_from_slice(b"ab");
    want.extend_from_slice(&0x1000u64.to_le_bytes());
    want.extend_from_slice(&1u64.to_le_bytes());
    want.extend_from_slice(&1u64.to_le_bytes());
    want.extend_from_slice(b"k");
    want.extend_from_slice(&1u64.to_le_bytes());
    want.push(9);
    want.extend_from_slice(&1u64.to_le_bytes());
    want.extend_from_slice(&1u64.to_le_bytes());
    want.extend_from_slice(b"s");
    want.extend_from_slice(&0x0102u64.to_le_bytes());
    assert_eq!(s.encode(), want);
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = sample().encode();
    for cut in 0..bytes.len() {
        assert!(SetupInfo::decode(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    let mut extra = bytes.clone();
    extra.push(0);
    assert_eq!(SetupInfo::decode(&extra), Err(SpsError::TrailingBytes(1)));
}

#[test]
fn huge_lengths_are_refused_before_allocating() {
    for len in [u64::MAX, 1 << 63, (MAX_SETUP_ENTRIES as u64) + 1, 1 << 40] {
        let mut w = SpsWriter::new();
        w.u64(len);
        assert!(SetupInfo::decode(&w.into_inner()).is_err());
        let mut w = SpsWriter::new();
        w.str("t").u64(4096).u64(len);
        assert!(SetupInfo::decode(&w.into_inner()).is_err());
    }
    // A map value claiming u64::MAX bytes is refused, not allocated.
    // (The same bytes happen to be a valid LLVM 14 Setup: one symbol
    // "k" at address u64::MAX.)
    let mut w = SpsWriter::new();
    w.str("t").u64(4096).u64(1).str("k").u64(u64::MAX);
    let bytes = w.into_inner();
    assert!(matches!(
        SetupInfo::decode_layout(&bytes, true),
        Err((SpsError::Truncated { .. }, _))
    ));
    assert_eq!(SetupInfo::decode(&bytes).unwrap().1, Dialect::Llvm14);
}

#[test]
fn invalid_utf8_and_bool() {
    let mut w = SpsWriter::new();
    w.bytes(&[0xff, 0xfe]);
    let b = w.into_inner();
    assert!(matches!(
        SetupInfo::decode(&b),
        Err(SpsError::InvalidUtf8 { .. })
    ));
    assert_eq!(SpsReader::new(&[2]).bool(), Err(SpsError::InvalidBool(2)));
    assert_eq!(SpsReader::new(&[1]).bool(), Ok(true));
}

#[test]
fn each_layout_decodes_as_its_dialect() {
    let mut llvm = SetupInfo {
        target_triple: "x86_64-unknown-linux-gnu".into(),
        page_size: 4096,
        bootstrap_map: Vec::new(),
        bootstrap_symbols: vec![
            (
                "__llvm_orc_SimpleExecutorMemoryManager_Instance".into(),
                0x5555_0000,
            ),
            (
                "__llvm_orc_SimpleExecutorMemoryManager_reserve_wrapper".into(),
                0x5555_1000,
            ),
            (
                "__llvm_orc_bootstrap_mem_write_uint64s_wrapper".into(),
                0x5555_2000,
            ),
        ],
    };
    // LLVM 14: no map at all.
    let (back, dialect) = SetupInfo::decode(&llvm.encode_for(Dialect::Llvm14)).unwrap();
    assert_eq!((&back, dialect), (&llvm, Dialect::Llvm14));
    // Only the `_wrapper` symbols are functions; data objects are not.
    assert_eq!(
        back.functions(Dialect::Llvm14)
            .map(|(n, _)| n)
            .collect::<Vec<_>>(),
        [
            "__llvm_orc_SimpleExecutorMemoryManager_reserve_wrapper",
            "__llvm_orc_bootstrap_mem_write_uint64s_wrapper"
        ]
    );
    // LLVM 15+: a map without orcwire's entry.
    llvm.bootstrap_map.push(("some.key".into(), vec![1, 2]));
    let (back, dialect) = SetupInfo::decode(&llvm.encode_for(Dialect::Llvm15)).unwrap();
    assert_eq!((&back, dialect), (&llvm, Dialect::Llvm15));
    // Encoding for LLVM 14 drops the map.
    let (back, _) = SetupInfo::decode(&llvm.encode_for(Dialect::Llvm14)).unwrap();
    assert!(back.bootstrap_map.is_empty());
    // Hostile LLVM 14 Setups: a count beyond the payload, a name
    // length beyond it, a name that is not UTF-8.
    for symbols in [
        |w: &mut SpsWriter| {
            w.u64(1 << 40);
        },
        |w: &mut SpsWriter| {
            w.u64(1).u64(u64::MAX - 3);
        },
        |w: &mut SpsWriter| {
            w.u64(1).bytes(&[b'f', 0xff]).u64(7);
        },
    ] {
        let mut w = SpsWriter::new();
        w.str("x86_64-unknown-linux-gnu").u64(4096);
        symbols(&mut w);
        assert!(SetupInfo::decode(&w.into_inner()).is_err());
    }
    // Every truncation of an LLVM 14 Setup is an error too.
    let bytes = llvm.encode_for(Dialect::Llvm14);
    for cut in 0..bytes.len() {
        assert!(SetupInfo::decode(&bytes[..cut]).is_err(), "cut at {cut}");
    }
}

#[test]
fn llvm_wrappers_are_told_from_data_objects() {
    for wrapper in [
        "__llvm_orc_SimpleExecutorMemoryManager_reserve_wrapper",
        "llvm_orc_registerEHFrameSectionWrapper",
        "__llvm_orc_ExecutorSharedMemoryMapperService_Reserve",
    ] {
        assert!(is_llvm_wrapper(wrapper), "{wrapper}");
    }
    for data in [
        "__llvm_orc_SimpleExecutorMemoryManager_Instance",
        "__llvm_orc_SimpleRemoteEPC_dispatch_ctx",
        "__llvm_orc_SimpleRemoteEPC_dispatch_fn",
        "__llvm_orc_ExecutorSharedMemoryMapperService_Instance",
    ] {
        assert!(!is_llvm_wrapper(data), "{data}");
    }
}

#[test]
fn errors_round_trip_and_hostile_ones_are_refused() {
    assert_eq!(encode_error(None), [0]);
    assert_eq!(decode_error(&encode_error(None)), Ok(None));
    assert_eq!(decode_error(&[]), Ok(None));
    let e = encode_error(Some("boom"));
    assert_eq!(decode_error(&e), Ok(Some("boom".to_owned())));
    for cut in 1..e.len() {
        assert!(decode_error(&e[..cut]).is_err(), "cut at {cut}");
    }
    assert!(decode_error(&[2]).is_err());
    assert!(decode_error(&[0, 0]).is_err());
    let mut huge = vec![1];
    huge.extend_from_slice(&u64::MAX.to_le_bytes());
    assert!(decode_error(&huge).is_err());
}

#[test]
fn host_facts_are_plausible() {
    assert!(host_target_triple().contains(std::env::consts::ARCH));
    assert!(host_page_size().is_power_of_two());
}
