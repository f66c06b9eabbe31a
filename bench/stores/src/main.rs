//! The disk tier's workload on three stores, each in a fresh directory under /tmp:
//! - fill: objects of `bytes` random (incompressible, like gzip) bytes plus a small
//!   summary, in batches of 512, without an fsync per batch, then one durable sync;
//! - restart: reopen and read every summary (what the tier's index is rebuilt from);
//! - reads: 20,000 random objects, page cache warm;
//! - purge: remove 100 objects durably (on disk before the call returns), 20 times;
//! - size on disk.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const BATCH: usize = 512;
/// redb's quick repair on durable commits (two fsyncs, fast recovery) or not (one fsync,
/// a full check of the file after a crash): `QUICK_REPAIR=0` to compare.
static QUICK_REPAIR: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| std::env::var("QUICK_REPAIR").as_deref() != Ok("0"));

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n.div_ceil(8)).flat_map(|_| self.next().to_le_bytes()).take(n).collect()
    }
}

fn key(i: usize) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&(i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
    k[8..].copy_from_slice(&(i as u64).to_be_bytes());
    k
}

trait Store {
    fn name(&self) -> &'static str;
    fn write(&mut self, batch: &[(usize, Vec<u8>, Vec<u8>)]);
    fn sync(&mut self);
    fn reopen_and_scan(&mut self) -> usize;
    fn read(&mut self, i: usize) -> usize;
    fn purge(&mut self, keys: &[usize]);
}

// ---- redb: two tables, one transaction per batch (Durability::None), Immediate to sync.
const OBJECTS: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("objects");
const SUMMARIES: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("summaries");

struct Redb {
    path: PathBuf,
    db: Option<redb::Database>,
}
impl Redb {
    fn open(path: &Path) -> redb::Database {
        redb::Database::builder()
            .set_cache_size(32 << 20)
            .create(path)
            .expect("redb")
    }
    fn db(&self) -> &redb::Database {
        self.db.as_ref().expect("open")
    }
}
impl Store for Redb {
    fn name(&self) -> &'static str {
        "redb 4"
    }
    fn write(&mut self, batch: &[(usize, Vec<u8>, Vec<u8>)]) {
        let mut txn = self.db().begin_write().expect("txn");
        txn.set_durability(redb::Durability::None).expect("durability");
        {
            let mut o = txn.open_table(OBJECTS).expect("t");
            let mut s = txn.open_table(SUMMARIES).expect("t");
            for (i, value, summary) in batch {
                o.insert(&key(*i)[..], &value[..]).expect("insert");
                s.insert(&key(*i)[..], &summary[..]).expect("insert");
            }
        }
        txn.commit().expect("commit");
    }
    fn sync(&mut self) {
        let mut txn = self.db().begin_write().expect("txn");
        txn.set_quick_repair(*QUICK_REPAIR);
        txn.commit().expect("commit");
    }
    fn reopen_and_scan(&mut self) -> usize {
        self.db = None;
        self.db = Some(Self::open(&self.path));
        use redb::{ReadableDatabase, ReadableTable};
        let txn = self.db().begin_read().expect("read");
        let s = txn.open_table(SUMMARIES).expect("t");
        s.iter().expect("iter").map(|e| e.expect("entry").1.value().len()).filter(|l| *l > 0).count()
    }
    fn read(&mut self, i: usize) -> usize {
        use redb::ReadableDatabase;
        let txn = self.db().begin_read().expect("read");
        let o = txn.open_table(OBJECTS).expect("t");
        let v = o.get(&key(i)[..]).expect("get");
        v.map_or(0, |v| v.value().to_vec().len())
    }
    fn purge(&mut self, keys: &[usize]) {
        let mut txn = self.db().begin_write().expect("txn");
        txn.set_quick_repair(*QUICK_REPAIR);
        {
            let mut o = txn.open_table(OBJECTS).expect("t");
            let mut s = txn.open_table(SUMMARIES).expect("t");
            for i in keys {
                o.remove(&key(*i)[..]).expect("remove");
                s.remove(&key(*i)[..]).expect("remove");
            }
        }
        txn.commit().expect("commit"); // Immediate: fsync before returning
    }
}

// ---- fjall: two keyspaces (objects with key-value separation, as for blobs), a batch
// per fill batch, the journal synced to make things durable.
struct Fjall {
    path: PathBuf,
    db: Option<(fjall::Database, fjall::Keyspace, fjall::Keyspace)>,
}
impl Fjall {
    fn open(path: &Path) -> (fjall::Database, fjall::Keyspace, fjall::Keyspace) {
        let db = fjall::Database::builder(path).open().expect("fjall");
        let o = db
            .keyspace("objects", || {
                fjall::KeyspaceCreateOptions::default()
                    .with_kv_separation(Some(fjall::KvSeparationOptions::default()))
            })
            .expect("ks");
        let s = db
            .keyspace("summaries", fjall::KeyspaceCreateOptions::default)
            .expect("ks");
        (db, o, s)
    }
}
impl Store for Fjall {
    fn name(&self) -> &'static str {
        "fjall 3 (LSM, blobs separated)"
    }
    fn write(&mut self, batch: &[(usize, Vec<u8>, Vec<u8>)]) {
        let (db, o, s) = self.db.as_ref().expect("open");
        let mut b = db.batch();
        for (i, value, summary) in batch {
            b.insert(o, key(*i).to_vec(), value.clone());
            b.insert(s, key(*i).to_vec(), summary.clone());
        }
        b.commit().expect("commit");
    }
    fn sync(&mut self) {
        let (db, _, _) = self.db.as_ref().expect("open");
        db.persist(fjall::PersistMode::SyncAll).expect("persist");
    }
    fn reopen_and_scan(&mut self) -> usize {
        self.db = None;
        self.db = Some(Self::open(&self.path));
        let (_, _, s) = self.db.as_ref().expect("open");
        s.iter().map(|g| g.value().expect("value").len()).filter(|l| *l > 0).count()
    }
    fn read(&mut self, i: usize) -> usize {
        let (_, o, _) = self.db.as_ref().expect("open");
        o.get(key(i)).expect("get").map_or(0, |v| v.len())
    }
    fn purge(&mut self, keys: &[usize]) {
        let (db, o, s) = self.db.as_ref().expect("open");
        let mut b = db.batch();
        for i in keys {
            b.remove(o, key(*i).to_vec());
            b.remove(s, key(*i).to_vec());
        }
        b.commit().expect("commit");
        db.persist(fjall::PersistMode::SyncAll).expect("persist");
    }
}

// ---- plain files: one file per object (summary first, 4-byte length), written to a
// temporary name and renamed; the directory fsynced to make things durable.
struct Files {
    dir: PathBuf,
}
impl Files {
    fn file(&self, i: usize) -> PathBuf {
        let k = key(i);
        self.dir
            .join(format!("{:02x}", k[0]))
            .join(k.iter().map(|b| format!("{b:02x}")).collect::<String>())
    }
    fn sync_dirs(&self) {
        for b in 0..=255u8 {
            let d = self.dir.join(format!("{b:02x}"));
            if let Ok(f) = std::fs::File::open(&d) {
                f.sync_all().expect("fsync dir");
            }
        }
    }
}
impl Store for Files {
    fn name(&self) -> &'static str {
        "plain files (one per object)"
    }
    fn write(&mut self, batch: &[(usize, Vec<u8>, Vec<u8>)]) {
        for (i, value, summary) in batch {
            let path = self.file(*i);
            std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
            let tmp = path.with_extension("tmp");
            let mut data = (summary.len() as u32).to_be_bytes().to_vec();
            data.extend_from_slice(summary);
            data.extend_from_slice(value);
            std::fs::write(&tmp, data).expect("write");
            std::fs::rename(&tmp, &path).expect("rename");
        }
    }
    fn sync(&mut self) {
        // Every file's data and every directory: what a durable state needs.
        for b in 0..=255u8 {
            let d = self.dir.join(format!("{b:02x}"));
            if let Ok(entries) = std::fs::read_dir(&d) {
                for e in entries.flatten() {
                    std::fs::File::open(e.path()).expect("open").sync_all().expect("fsync");
                }
            }
        }
        self.sync_dirs();
    }
    fn reopen_and_scan(&mut self) -> usize {
        use std::io::Read;
        let mut n = 0;
        for b in 0..=255u8 {
            let d = self.dir.join(format!("{b:02x}"));
            if let Ok(entries) = std::fs::read_dir(&d) {
                for e in entries.flatten() {
                    let mut head = [0u8; 4];
                    let mut f = std::fs::File::open(e.path()).expect("open");
                    f.read_exact(&mut head).expect("read");
                    let mut summary = vec![0u8; u32::from_be_bytes(head) as usize];
                    f.read_exact(&mut summary).expect("read");
                    n += 1;
                }
            }
        }
        n
    }
    fn read(&mut self, i: usize) -> usize {
        std::fs::read(self.file(i)).map_or(0, |v| v.len())
    }
    fn purge(&mut self, keys: &[usize]) {
        for i in keys {
            let _ = std::fs::remove_file(self.file(*i));
        }
        self.sync_dirs();
    }
}

fn dir_size(path: &Path) -> u64 {
    let meta = std::fs::metadata(path).expect("stat");
    if meta.is_file() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .expect("read_dir")
        .flatten()
        .map(|e| dir_size(&e.path()))
        .sum()
}

fn run(store: &mut dyn Store, root: &Path, objects: usize, bytes: usize) {
    let mut rng = Rng(0x5eed);
    let fill_started = Instant::now();
    let mut batch = Vec::with_capacity(BATCH);
    for i in 0..objects {
        batch.push((i, rng.bytes(bytes), format!("{},cat_p_{i},cat_p,store", 1_800_000_000u64 + i as u64).into_bytes()));
        if batch.len() == BATCH {
            store.write(&batch);
            batch.clear();
        }
    }
    store.write(&batch);
    store.sync();
    let fill = fill_started.elapsed();
    let scan_started = Instant::now();
    let found = store.reopen_and_scan();
    let scan = scan_started.elapsed();
    assert_eq!(found, objects, "{}: every summary back", store.name());
    let reads = 20_000;
    let read_started = Instant::now();
    let mut read_bytes = 0;
    for _ in 0..reads {
        read_bytes += store.read(rng.next() as usize % objects);
    }
    let read = read_started.elapsed();
    assert!(read_bytes >= reads * bytes, "{}: reads found their objects", store.name());
    let mut purges: Vec<Duration> = (0..20)
        .map(|round| {
            let keys: Vec<usize> = (0..100).map(|k| (round * 100 + k) * 7 % objects).collect();
            let started = Instant::now();
            store.purge(&keys);
            started.elapsed()
        })
        .collect();
    purges.sort();
    println!(
        "| {} | {:.0} | {:.0} ms | {:.0} | {:.1} ms | {} MiB |",
        store.name(),
        objects as f64 / fill.as_secs_f64(),
        scan.as_secs_f64() * 1000.0,
        reads as f64 / read.as_secs_f64(),
        purges[purges.len() / 2].as_secs_f64() * 1000.0,
        dir_size(root) >> 20,
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let objects: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(50_000);
    let bytes: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(13_000);
    let base = std::env::temp_dir().join(format!("floodgate-stores-{}", std::process::id()));
    println!("{objects} objects of {bytes} bytes:\n");
    println!("| store | fill, objects/s | restart: reopen + read every summary | random reads/s | purge of 100, durable (median of 20) | on disk |");
    println!("|---|---|---|---|---|---|");
    let redb_dir = base.join("redb");
    std::fs::create_dir_all(&redb_dir).expect("dir");
    let path = redb_dir.join("cache.redb");
    run(&mut Redb { db: Some(Redb::open(&path)), path }, &redb_dir, objects, bytes);
    let fjall_dir = base.join("fjall");
    run(&mut Fjall { db: Some(Fjall::open(&fjall_dir)), path: fjall_dir.clone() }, &fjall_dir, objects, bytes);
    let files_dir = base.join("files");
    std::fs::create_dir_all(&files_dir).expect("dir");
    run(&mut Files { dir: files_dir.clone() }, &files_dir, objects, bytes);
    let _ = std::fs::remove_dir_all(&base);
}
