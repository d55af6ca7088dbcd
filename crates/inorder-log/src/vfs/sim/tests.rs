use super::*;

/// A new file in `/d`, a directory whose entry in `/` is durable.
fn file(vfs: &SimVfs, path: &str) -> Arc<dyn VfsFile> {
    if !vfs.is_dir(Path::new("/d")) {
        vfs.create_dir(Path::new("/d")).unwrap();
        vfs.sync_dir(Path::new("/")).unwrap();
    }
    vfs.open(Path::new(path), OpenMode::CreateNew).unwrap()
}

#[test]
fn power_loss_keeps_durable_bytes_and_names_only() {
    let vfs = SimVfs::new();
    let f = file(&vfs, "/d/a");
    f.write_all_at(b"durable", 0).unwrap();
    f.sync_data().unwrap();
    vfs.sync_dir(Path::new("/d")).unwrap();
    f.write_all_at(b"-unsynced", 7).unwrap();
    let _g = file(&vfs, "/d/b"); // never dir-synced
    for seed in 0..50 {
        let after = vfs.crash_power(seed);
        let data = after.read_file(Path::new("/d/a")).unwrap();
        assert!(data.starts_with(b"durable"), "seed {seed}: {data:?}");
        assert!(data.len() <= 16);
        assert_eq!(after.read_file(Path::new("/d/b")), None);
    }
}

#[test]
fn a_directory_never_synced_in_its_parent_is_lost_with_its_files() {
    let vfs = SimVfs::new();
    vfs.create_dir(Path::new("/new")).unwrap();
    let f = vfs.open(Path::new("/new/a"), OpenMode::CreateNew).unwrap();
    f.write_all_at(b"data", 0).unwrap();
    f.sync_data().unwrap();
    vfs.sync_dir(Path::new("/new")).unwrap();
    let after = vfs.crash_power(7);
    assert!(!after.is_dir(Path::new("/new")));
    assert_eq!(after.read_file(Path::new("/new/a")), None);
    vfs.sync_dir(Path::new("/")).unwrap();
    let after = vfs.crash_power(7);
    assert_eq!(after.read_file(Path::new("/new/a")).unwrap(), b"data");
}

#[test]
fn creating_a_directory_needs_its_parent() {
    let vfs = SimVfs::new();
    let missing = vfs.create_dir(Path::new("/a/b")).unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound);
    vfs.create_dir(Path::new("/a")).unwrap();
    assert_eq!(vfs.create_dir(Path::new("/a")).unwrap_err().kind(), ErrorKind::AlreadyExists);
    vfs.create_dir(Path::new("/a/b")).unwrap();
    assert_eq!(vfs.read_dir(Path::new("/a")).unwrap(), ["b"]);
}

#[test]
fn process_crash_keeps_everything_written() {
    let vfs = SimVfs::new();
    let f = file(&vfs, "/d/a");
    f.write_all_at(b"page cache", 0).unwrap();
    let after = vfs.crash_process();
    assert_eq!(after.read_file(Path::new("/d/a")).unwrap(), b"page cache");
}

#[test]
fn an_unsynced_rename_is_undone_by_power_loss() {
    let vfs = SimVfs::new();
    let f = file(&vfs, "/d/tmp");
    f.sync_data().unwrap();
    vfs.sync_dir(Path::new("/d")).unwrap();
    vfs.rename(Path::new("/d/tmp"), Path::new("/d/final")).unwrap();
    let after = vfs.crash_power(1);
    assert!(after.read_file(Path::new("/d/tmp")).is_some());
    assert!(after.read_file(Path::new("/d/final")).is_none());
}

#[test]
fn injected_faults_fire_once_after_the_skip_count() {
    let vfs = SimVfs::new();
    let f = file(&vfs, "/d/a");
    vfs.inject(FaultOp::SyncData, 1);
    assert!(f.sync_data().is_ok());
    assert!(f.sync_data().is_err());
    assert!(f.sync_data().is_ok());
    assert_eq!(vfs.data_syncs(), 2);
}

#[test]
fn an_injected_error_has_the_chosen_kind() {
    let vfs = SimVfs::new();
    let f = file(&vfs, "/d/a");
    vfs.inject_error(FaultOp::Rename, 0, ErrorKind::StorageFull);
    let err = vfs.rename(Path::new("/d/a"), Path::new("/d/b")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::StorageFull);
    vfs.inject_error(FaultOp::Write, 0, ErrorKind::StorageFull);
    assert_eq!(f.write_all_at(b"x", 0).unwrap_err().kind(), ErrorKind::StorageFull);
    assert_eq!(vfs.read_file(Path::new("/d/a")).unwrap(), b"", "a refused write wrote nothing");
}

#[test]
fn a_full_disk_writes_what_fits_then_refuses() {
    let vfs = SimVfs::new();
    let a = file(&vfs, "/d/a");
    let b = file(&vfs, "/d/b");
    vfs.set_capacity(Some(10));
    a.write_all_at(b"123456", 0).unwrap();
    let err = b.write_all_at(b"abcdefgh", 0).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::StorageFull);
    assert_eq!(vfs.read_file(Path::new("/d/b")).unwrap(), b"abcd");
    a.write_all_at(b"XY", 0).unwrap(); // overwriting needs no space
    vfs.remove_file(Path::new("/d/a")).unwrap();
    b.write_all_at(b"efgh", 4).unwrap();
    assert_eq!(vfs.used_bytes(), 8);
}

#[test]
fn handles_and_locks_are_released_on_drop() {
    let vfs = SimVfs::new();
    let f = file(&vfs, "/d/a");
    assert_eq!(vfs.open_handles(), 1);
    drop(f);
    assert_eq!(vfs.open_handles(), 0);
    let lock = vfs.lock_exclusive(Path::new("/d/LOCK")).unwrap();
    assert!(vfs.lock_exclusive(Path::new("/d/LOCK")).is_err());
    drop(lock);
    assert!(vfs.lock_exclusive(Path::new("/d/LOCK")).is_ok());
}
