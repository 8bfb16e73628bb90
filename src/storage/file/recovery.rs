//! Opening a store: the first layout's segments, the replay of the
//! checkpoint and the log, and the start of the commit shards.

use super::*;

/// Segments of the first layout in `dir`, by number.
fn list_legacy(dir: &Path) -> Result<Vec<u64>, StorageError> {
    let mut numbers = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(numbers),
        Err(e) => return Err(StorageError::path("list the data directory", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::path("list the data directory", dir, e))?;
        if let Some(number) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            numbers.push(number);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

fn legacy_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}.seg"))
}

fn remove_dir_if_present(dir: &Path) -> Result<(), StorageError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::path("delete", dir, e)),
    }
}

/// The streams and heads a replay ends with.
struct Replayed {
    streams: StreamSet,
    heads: Heads,
    /// Log segments seen (deleted once a new checkpoint is written).
    old_segments: Vec<(u32, u64)>,
    legacy: Vec<u64>,
}

/// Rebuilds the committed state from the checkpoint and the log.
fn replay(
    dir: &Path,
    options: &FileOptions,
    files: &FileCache,
    dirty: &Mutex<Dirty>,
    read_only: bool,
) -> Result<Replayed, StorageError> {
    let found = checkpoint::read(dir)?;
    let legacy = list_legacy(dir)?;
    let streams_lock = RwLock::new(StreamSet::default());
    let mut planner = Planner {
        heads: Heads::default(),
        chunk_bytes: found
            .as_ref()
            .map_or(options.chunk_bytes, |c| c.chunk_bytes),
    };
    if let Some(found) = &found {
        for record in found.streams.clone() {
            let id = record.id;
            let state = State::from_record(record);
            let head = Head {
                stream: Arc::new(Stream::new(id, state)),
                tail: 0,
                active: None,
            };
            let (tail, active) = {
                let state = head
                    .stream
                    .state
                    .read()
                    .unwrap_or_else(PoisonError::into_inner);
                (state.tail, state.active())
            };
            streams_lock
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(head.stream.clone());
            planner.heads.insert(Head {
                tail,
                active,
                ..head
            });
        }
    }
    let mut touched: HashSet<StreamId> = HashSet::new();
    let mut present: HashMap<(StreamId, u64), bool> = HashMap::new();
    let io_error: std::cell::RefCell<Option<StorageError>> = std::cell::RefCell::new(None);
    let policy = wal::Policy {
        read_only,
        truncate_corrupt_at: options.truncate_corrupt_at.as_deref(),
    };
    let old_segments = layout::list_wal(dir)?;
    let progress =
        progress::ReplayProgress::start(dir, replay_bytes(dir, found.as_ref(), &old_segments));
    // Read-only beside a running server: what its chunk files do not hold
    // yet (it writes them after the log) is kept in memory for readers.
    let beside_writer = ShardBuffer::beside_writer(dir);
    let mut apply = |mutation: Mutation, end: u64| -> Result<(), String> {
        progress.applied(end);
        let id = match &mutation {
            Mutation::Create { spec, .. } => spec.id,
            Mutation::Append(append) => append.id,
            Mutation::SoftDelete { id } | Mutation::Remove { id } | Mutation::Trim { id, .. } => {
                *id
            }
        };
        let mut writes = ChunkWrites::default();
        let effect = planner
            .plan(mutation, &mut writes)
            .map_err(|r| r.describe())?;
        touched.insert(id);
        let mut target = Target {
            streams: &streams_lock,
            root: dir,
            files,
            dirty,
            cache: None,
            buffer: read_only.then_some(&beside_writer),
            delete_files: !read_only,
        };
        let outcome = (if read_only {
            Ok(())
        } else {
            writes.skip_gone(dir, &mut present);
            writes.apply(dir, files, dirty)
        })
        .and_then(|()| effect.map_or(Ok(()), |effect| target.publish(effect)));
        if let Err(error) = outcome {
            *io_error.borrow_mut() = Some(error);
            return Err("the replay could not write chunk files".into());
        }
        Ok(())
    };
    match &found {
        None => {
            if !legacy.is_empty() {
                tracing::info!(dir = %dir.display(), segments = legacy.len(), "converting the first file layout in place");
            }
            for (k, &number) in legacy.iter().enumerate() {
                let path = legacy_path(dir, number);
                let is_last = k + 1 == legacy.len();
                progress.segment(0, 0);
                let end = wal::scan(
                    &path,
                    &wal::legacy_header(number),
                    0,
                    is_last,
                    policy,
                    &mut apply,
                );
                if let Some(error) = io_error.borrow_mut().take() {
                    return Err(error);
                }
                if end? == wal::End::Truncated {
                    break;
                }
            }
        }
        Some(found) => {
            for (shard, position) in found.positions.iter().enumerate() {
                let shard = shard as u32;
                let segments: Vec<u64> = old_segments
                    .iter()
                    .filter(|&&(s, seq)| s == shard && seq >= position.seq)
                    .map(|&(_, seq)| seq)
                    .collect();
                for (k, &seq) in segments.iter().enumerate() {
                    let path = layout::wal_path(dir, shard, seq);
                    if seq != position.seq + k as u64 {
                        return Err(StorageError::Corrupt(format!(
                            "log segment {} is missing before {}",
                            layout::wal_name(shard, position.seq + k as u64),
                            path.display()
                        )));
                    }
                    let from = if k == 0 { position.offset } else { 0 };
                    let is_last = k + 1 == segments.len();
                    progress.segment(shard, from);
                    let end = wal::scan(
                        &path,
                        &wal::wal_header(shard, seq),
                        from,
                        is_last,
                        policy,
                        &mut apply,
                    );
                    if let Some(error) = io_error.borrow_mut().take() {
                        return Err(error);
                    }
                    if end? == wal::End::Truncated {
                        if !read_only {
                            for &later in &segments[k + 1..] {
                                let path = layout::wal_path(dir, shard, later);
                                tracing::warn!(file = %path.display(), "removing log segment after the truncation point");
                                std::fs::remove_file(&path).map_err(|e| {
                                    StorageError::path("remove log segment", &path, e)
                                })?;
                            }
                        }
                        break;
                    }
                }
            }
        }
    }
    let streams = streams_lock
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    progress.finish(streams.len());
    for (&(id, start), _) in present.iter().filter(|(_, here)| !**here) {
        let retained = streams.get(id).is_some_and(|stream| {
            let state = stream.state.read().unwrap_or_else(PoisonError::into_inner);
            state.chunks.chunks().iter().any(|c| c.start == start)
        });
        if retained {
            return Err(StorageError::Corrupt(format!(
                "chunk file {} of a retained chunk is missing",
                layout::chunk_path(dir, id, start).display()
            )));
        }
    }
    if !read_only {
        for &id in &touched {
            finish_stream(dir, id, streams.get(id), files, dirty)?;
        }
    }
    if found.is_some() && !legacy.is_empty() {
        // Either a conversion stopped while deleting its segments, or an
        // older version wrote them after the conversion: never read, never
        // deleted here.
        tracing::warn!(
            dir = %dir.display(),
            segments = legacy.len(),
            "first-layout segments (*.seg) lie beside a checkpoint and are ignored: if a conversion \
             stopped while deleting them they hold nothing new (delete them); if an older version \
             wrote them after the conversion, export them with that version and import them here"
        );
    }
    Ok(Replayed {
        streams,
        heads: planner.heads,
        old_segments,
        legacy: if found.is_none() { legacy } else { Vec::new() },
    })
}

/// About how many log bytes a replay reads: the log after the
/// checkpoint's positions, or the first layout's segments.
fn replay_bytes(
    dir: &Path,
    found: Option<&checkpoint::Checkpoint>,
    segments: &[(u32, u64)],
) -> u64 {
    let size = |path: PathBuf| std::fs::metadata(path).map_or(0, |m| m.len());
    match found {
        None => list_legacy(dir)
            .unwrap_or_default()
            .into_iter()
            .map(|number| size(legacy_path(dir, number)))
            .sum(),
        Some(found) => segments
            .iter()
            .filter_map(|&(shard, seq)| {
                let position = found.positions.get(shard as usize)?;
                let from = if seq == position.seq {
                    position.offset
                } else if seq > position.seq {
                    0
                } else {
                    return None;
                };
                Some(size(layout::wal_path(dir, shard, seq)).saturating_sub(from))
            })
            .sum(),
    }
}

/// After a replay, cuts a stream's files to what the replay ended with:
/// the last chunk and its index to their lengths, files of chunks it no
/// longer has deleted (written before the crash past what the log kept).
fn finish_stream(
    dir: &Path,
    id: StreamId,
    stream: Option<&Arc<Stream>>,
    files: &FileCache,
    dirty: &Mutex<Dirty>,
) -> Result<(), StorageError> {
    let Some(stream) = stream else {
        return removal::remove_stream_files(dir, id, files, dirty);
    };
    let state = stream.state.read().unwrap_or_else(PoisonError::into_inner);
    if let Some(active) = state.active() {
        let path = layout::chunk_path(dir, id, active.start);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| StorageError::path("open chunk file", &path, e))?;
        file.set_len(active.len)
            .map_err(|e| StorageError::path("truncate chunk file", &path, e))?;
        let index = layout::index_path(dir, id, active.start);
        match std::fs::OpenOptions::new().write(true).open(&index) {
            Ok(file) => file
                .set_len(u64::from(active.index_entries) * chunk::INDEX_ENTRY)
                .map_err(|e| StorageError::path("truncate chunk index", &index, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::path("open chunk index", &index, e)),
        }
        dirty
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .chunks
            .insert((id, active.start));
    }
    let keep: HashSet<u64> = state.chunks.chunks().iter().map(|c| c.start).collect();
    let stream_dir = layout::stream_dir(dir, id);
    let entries = match std::fs::read_dir(&stream_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StorageError::path("list stream directory", &stream_dir, e)),
    };
    for entry in entries {
        let entry =
            entry.map_err(|e| StorageError::path("list stream directory", &stream_dir, e))?;
        let name = entry.file_name();
        if name
            .to_str()
            .and_then(layout::chunk_start_of)
            .is_none_or(|start| !keep.contains(&start))
        {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|e| StorageError::path("delete", &path, e))?;
            dirty
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .dirs
                .insert(stream_dir.clone());
        }
    }
    Ok(())
}

impl FileStorage {
    pub(super) fn open_with(
        dir: &Path,
        options: FileOptions,
        lock: Option<DirLock>,
    ) -> Result<Self, StorageError> {
        let read_only = lock.is_none();
        if read_only && checkpoint::read(dir)?.is_none() && !list_legacy(dir)?.is_empty() {
            return Err(StorageError::Unavailable(format!(
                "{} holds the first file layout; start the server on it once to convert it in place, \
                 or export it with the version that wrote it",
                dir.display()
            )));
        }
        let shard_count = options.shard_count();
        let files = FileCache::new(dir, options.max_open_files, !read_only);
        let dirty = Mutex::new(Dirty::default());
        if !read_only && checkpoint::read(dir)?.is_none() {
            // Never checkpointed: anything here is the leftover of a
            // conversion that did not finish. It starts over.
            remove_dir_if_present(&dir.join(layout::STREAMS_DIR))?;
            remove_dir_if_present(&dir.join(layout::WAL_DIR))?;
        }
        let replayed = replay(dir, &options, &files, &dirty, read_only)?;

        // Specs, shards and routes.
        let mut streams: Vec<&Arc<Stream>> = replayed.streams.iter().collect();
        streams.sort_unstable_by_key(|stream| stream.id);
        let mut recovered = Vec::with_capacity(streams.len());
        let mut shard_of: HashMap<StreamId, usize> = HashMap::new();
        let mut routes = HashMap::new();
        for stream in streams {
            let id = stream.id;
            let state = stream.state.read().unwrap_or_else(PoisonError::into_inner);
            let spec: StreamSpec = super::spec::decode(&state.spec).map_err(|e| {
                StorageError::Corrupt(format!(
                    "the stored description of stream {id} in {} is invalid: {e}",
                    dir.display()
                ))
            })?;
            let hashed = (layout::mix(id) % shard_count as u64) as usize;
            let shard = spec
                .fork
                .as_ref()
                .and_then(|link| shard_of.get(&link.source).copied())
                .unwrap_or(hashed);
            if shard != hashed {
                routes.insert(id, shard);
            }
            shard_of.insert(id, shard);
            recovered.push(RecoveredStream {
                head: state.head(),
                tail: state.tail,
                closed: state.closed().clone(),
                producers: state.producers().to_vec(),
                stream_seq: state.stream_seq().map(str::to_owned),
                soft_deleted: state.soft_deleted,
                spec,
            });
        }

        let backend = backend_name(options.durable);
        let first_seq = replayed
            .old_segments
            .iter()
            .map(|&(_, seq)| seq)
            .max()
            .map_or(1, |max| max + 1);
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            backend,
            streams: RwLock::new(replayed.streams),
            files,
            shards: (0..shard_count)
                .map(|_| Shard {
                    queue: CommitQueue::new(backend),
                    published: Mutex::new(LogPosition {
                        seq: first_seq,
                        offset: wal::WAL_HEADER,
                    }),
                    buffer: ShardBuffer::default(),
                })
                .collect(),
            dirty,
            routes: RwLock::new(routes),
            poisoned: Mutex::new(None),
            logged: AtomicU64::new(0),
            signal: Mutex::new(Signal::default()),
            wake: Condvar::new(),
            room: Condvar::new(),
            checkpointing: Mutex::new(()),
            recovered: Mutex::new(recovered),
            read_only,
            options: FileOptions {
                commit_shards: shard_count,
                ..options
            },
        });
        let metadata = MetadataDir::new(dir, shared.options.durable, read_only);
        if read_only {
            for shard in &shared.shards {
                shard.queue.close();
            }
            return Ok(Self {
                inner: Arc::new(Inner {
                    shared,
                    #[cfg(test)]
                    abandoned: std::sync::atomic::AtomicBool::new(false),
                    threads: Mutex::new(Vec::new()),
                    checkpointer: Mutex::new(None),
                    metadata,
                    _lock: None,
                }),
            });
        }

        // A checkpoint of what was replayed, naming fresh log segments;
        // then the old log goes.
        shared.checkpoint()?;
        for &number in &replayed.legacy {
            let path = legacy_path(dir, number);
            std::fs::remove_file(&path)
                .map_err(|e| StorageError::path("delete converted segment", &path, e))?;
        }
        if !replayed.legacy.is_empty() {
            layout::sync_dir(dir)?;
            tracing::info!(dir = %dir.display(), "converted the first file layout");
        }

        let mut heads: Vec<Heads> = (0..shard_count).map(|_| Heads::default()).collect();
        for stream in replayed.heads.into_streams() {
            let shard = shard_of.get(&stream.id).copied().unwrap_or(0);
            heads[shard].insert(Head::of(stream));
        }
        let mut threads = Vec::new();
        std::fs::create_dir_all(dir.join(layout::WAL_DIR)).map_err(|e| {
            StorageError::path("create the log directory", &dir.join(layout::WAL_DIR), e)
        })?;
        for (index, heads) in heads.into_iter().enumerate() {
            let segment =
                wal::create_segment(dir, index as u32, first_seq, shared.options.segment_bytes)?;
            let publisher = shard::Publisher::new(shared.clone(), index);
            let (done, syncer) = if shared.options.durable {
                (shard::Done::Inline(publisher), None)
            } else {
                let (tx, rx) = std::sync::mpsc::sync_channel(shard::SYNC_QUEUE);
                (shard::Done::Thread(tx), Some((publisher, rx)))
            };
            let writer = shard::Writer {
                shared: shared.clone(),
                shard: index,
                planner: Planner {
                    heads,
                    chunk_bytes: shared.options.chunk_bytes,
                },
                segment,
                done,
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("ds-wal-{index}"))
                    .spawn(move || writer.run())
                    .map_err(StorageError::Io)?,
            );
            if let Some((publisher, rx)) = syncer {
                threads.push(
                    std::thread::Builder::new()
                        .name(format!("ds-sync-{index}"))
                        .spawn(move || shard::run_syncer(publisher, rx))
                        .map_err(StorageError::Io)?,
                );
            }
        }
        let checkpointer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("ds-checkpoint".into())
                .spawn(move || run_checkpoints(shared))
                .map_err(StorageError::Io)?
        };
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                #[cfg(test)]
                abandoned: std::sync::atomic::AtomicBool::new(false),
                threads: Mutex::new(threads),
                checkpointer: Mutex::new(Some(checkpointer)),
                metadata,
                _lock: lock,
            }),
        })
    }
}
