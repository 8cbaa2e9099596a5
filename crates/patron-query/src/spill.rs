//! Tables kept in a file instead of the heap.
//!
//! A scoring view over ten million customers is gigabytes of columns. Built in memory, they
//! would be the server's largest allocation, twice over while a rebuild runs beside the view it
//! replaces. A [`BatchSink`] with a spill directory writes each batch to an unnamed Arrow IPC
//! file there as it is made, and [`BatchSink::finish`] maps the file and hands back the
//! same batches as views of the mapping (zero-copy: the IPC writer aligns every buffer).
//! Their pages belong to the operating system's file cache, which can drop them under memory
//! pressure and read them back when they are touched, instead of to the process's heap.
//!
//! The file has no name (`O_TMPFILE` on Linux, or created and unlinked at once elsewhere), so
//! nothing is left behind by a crash, and no other program can open it to change it under the
//! mapping. It is freed when the last batch that maps it is dropped.

use std::fs::File;
use std::io::{BufWriter, Seek, Write};
use std::path::{Path, PathBuf};

use arrow::buffer::Buffer;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::FileDecoder;
use arrow::ipc::writer::FileWriter;
use arrow::record_batch::RecordBatch;

use crate::{QueryError, Result};

/// Where the batches of one table go as they are made.
pub enum BatchSink {
    /// Kept on the heap (no spill directory: command-line queries, tests).
    Memory(Vec<RecordBatch>),
    /// Written to an unnamed file in `dir`.
    File(Box<SpillFile>),
}

/// The file a [`BatchSink`] writes to.
pub struct SpillFile {
    dir: PathBuf,
    writer: FileWriter<BufWriter<File>>,
    rows: usize,
}

impl BatchSink {
    /// A sink for batches of `schema`: a file in `spill_dir` when there is one, else memory.
    pub fn new(spill_dir: Option<&Path>, schema: &SchemaRef) -> Result<Self> {
        let Some(dir) = spill_dir else {
            return Ok(Self::Memory(Vec::new()));
        };
        let io = |source| QueryError::Io {
            path: dir.to_owned(),
            source,
        };
        let file = tempfile::tempfile_in(dir).map_err(io)?;
        let writer = FileWriter::try_new(BufWriter::with_capacity(1 << 20, file), schema)?;
        Ok(Self::File(Box::new(SpillFile {
            dir: dir.to_owned(),
            writer,
            rows: 0,
        })))
    }

    pub fn push(&mut self, batch: RecordBatch) -> Result<()> {
        match self {
            Self::Memory(batches) => batches.push(batch),
            Self::File(file) => {
                file.rows += batch.num_rows();
                file.writer.write(&batch)?;
            }
        }
        Ok(())
    }

    /// Every batch pushed, in order, and the size of the file they map (0 in memory).
    pub fn finish(self) -> Result<(Vec<RecordBatch>, usize)> {
        let (dir, mut writer) = match self {
            Self::Memory(batches) => return Ok((batches, 0)),
            Self::File(file) => (file.dir, file.writer),
        };
        let io = |source| QueryError::Io {
            path: dir.clone(),
            source,
        };
        writer.finish()?;
        let schema = writer.schema().clone();
        let mut file = writer
            .into_inner()?
            .into_inner()
            .map_err(|e| io(e.into_error()))?;
        file.flush().map_err(io)?;
        file.rewind().map_err(io)?;
        let mapped = map(&file).map_err(io)?;
        let len = mapped.len();
        Ok((decode(mapped, schema)?, len))
    }
}

/// Maps `file` read-only.
#[allow(unsafe_code)]
fn map(file: &File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: the mapping is undefined behaviour only if the file changes while it is mapped.
    // This file has no name (see the module's documentation): only this process holds it, and
    // after `finish` nothing writes to it again.
    unsafe { memmap2::Mmap::map(file) }
}

/// The batches of a whole Arrow IPC file in `mapped`, as views of it.
fn decode(mapped: memmap2::Mmap, schema: SchemaRef) -> Result<Vec<RecordBatch>> {
    let len = mapped.len();
    let bytes = bytes::Bytes::from_owner(mapped);
    let buffer = Buffer::from(bytes);
    let corrupt = |what: &str| QueryError::Refused(format!("spilled table: {what}"));
    if len < 10 {
        return Err(corrupt("file too short"));
    }
    let trailer: [u8; 10] = buffer[len - 10..].try_into().expect("ten bytes");
    let footer_len = arrow::ipc::reader::read_footer_length(trailer)?;
    let footer = arrow::ipc::root_as_footer(&buffer[len - 10 - footer_len..len - 10])
        .map_err(|e| corrupt(&e.to_string()))?;
    let decoder = FileDecoder::new(schema, footer.version()).with_require_alignment(true);
    let mut out = Vec::new();
    for block in footer.recordBatches().iter().flatten() {
        let block_len = block.bodyLength() as usize + block.metaDataLength() as usize;
        let data = buffer.slice_with_length(block.offset() as usize, block_len);
        if let Some(batch) = decoder.read_record_batch(block, &data)? {
            out.push(batch);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        Array, ArrayRef, Float64Array, ListBuilder, StringArray, StringBuilder,
        TimestampMillisecondArray, UInt8Array,
    };
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use std::sync::Arc;

    fn batch(schema: &SchemaRef, from: usize, rows: usize) -> RecordBatch {
        let ids: StringArray = (from..from + rows)
            .map(|i| Some(format!("c{i:06}")))
            .collect();
        let at: TimestampMillisecondArray = (from..from + rows)
            .map(|i| (i % 3 != 0).then_some(i as i64 * 1_000))
            .collect();
        let score: UInt8Array = (from..from + rows)
            .map(|i| Some((i % 5) as u8 + 1))
            .collect();
        let value: Float64Array = (from..from + rows).map(|i| Some(i as f64 / 7.0)).collect();
        let mut lists = ListBuilder::new(StringBuilder::new());
        for i in from..from + rows {
            for k in 0..i % 3 {
                lists.values().append_value(format!("s{k}"));
            }
            lists.append(true);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(ids),
            Arc::new(at),
            Arc::new(score),
            Arc::new(value),
            Arc::new(lists.finish()),
        ];
        RecordBatch::try_new(schema.clone(), columns).unwrap()
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("at", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new("score", DataType::UInt8, false),
            Field::new("value", DataType::Float64, false),
            Field::new(
                "segments",
                DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
                false,
            ),
        ]))
    }

    #[test]
    fn spilled_batches_read_back_equal_and_leave_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let schema = schema();
        // Uneven sizes, so buffers of every batch start at odd places in the file.
        let sizes = [1, 1000, 37, 4097];
        let mut expected = Vec::new();
        let mut sink = BatchSink::new(Some(dir.path()), &schema).unwrap();
        let mut from = 0;
        for rows in sizes {
            let b = batch(&schema, from, rows);
            from += rows;
            expected.push(b.clone());
            sink.push(b).unwrap();
        }
        assert!(matches!(&sink, BatchSink::File(f) if f.rows == 5135));
        let (back, file_len) = sink.finish().unwrap();
        assert_eq!(back, expected);
        let body: usize = expected.iter().map(|b| b.get_array_memory_size()).sum();
        assert!(
            file_len > body / 2,
            "a {file_len}-byte file for {body} bytes of arrays"
        );
        // A row picked by hand, independent of the generator above.
        let ids = back[1]
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(ids.value(0), "c000001");
        assert!(back[1].column(1).is_null(2)); // row 3 of the table: 3 % 3 == 0
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(names.is_empty(), "the spill file has a name: {names:?}");
    }

    #[test]
    fn without_a_directory_batches_stay_in_memory() {
        let schema = schema();
        let mut sink = BatchSink::new(None, &schema).unwrap();
        let b = batch(&schema, 0, 10);
        sink.push(b.clone()).unwrap();
        assert!(matches!(sink, BatchSink::Memory(_)));
        assert_eq!(sink.finish().unwrap(), (vec![b], 0));
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_it() {
        let err = BatchSink::new(Some(Path::new("/nonexistent/patron-spill")), &schema())
            .err()
            .expect("no such directory");
        assert!(
            err.to_string().contains("/nonexistent/patron-spill"),
            "{err}"
        );
    }
}
