import Glibc
import SystemPackage

extension DiskCache {
    /// A disk cache segment file: a 64-byte header, then pack records verbatim, appended.
    ///
    ///     header:  "VDCACHE\0" | version u32 | segment count u32 | segment index u32 | zero u32 |
    ///              generation u64 | zeros | crc32c u32 (of bytes 0..<60)
    ///     records: exactly as in a pack (see ``PackFormat``), back to back
    ///
    /// Segment `i` of 16 holds a generation `g` with `g % 16 == i`; the highest generation
    /// is the newest (the one appended to). Recycling truncates the file and writes a new
    /// header, so a segment never holds records of two generations.
    enum Segment {
        static let headerSize = 64
        static let magic: [UInt8] = Array("VDCACHE\0".utf8)
        static let version: UInt32 = 1

        /// The highest generation a valid header names. Generations count segment rotations
        /// from 1; the index and the ring take them as Int and add to them, so a header past
        /// this (2^62: more rotations than a cache ever makes) is damaged.
        static let maxGeneration: UInt64 = 1 << 62

        static func fileName(_ index: Int) -> String { index < 10 ? "segment-0\(index)" : "segment-\(index)" }

        static func encodeHeader(index: Int, generation: UInt64) -> [UInt8] {
            var w = ByteWriter(capacity: headerSize)
            w.raw(magic)
            w.u32(version)
            w.u32(UInt32(DiskCache.segmentCount))
            w.u32(UInt32(index))
            w.u32(0)
            w.u64(generation)
            w.raw([UInt8](repeating: 0, count: 60 - w.bytes.count))
            w.u32(w.bytes.withUnsafeBytes { crc32c($0) })
            return w.bytes
        }

        /// The generation a header names, or nil when it is not a valid header of segment `index`.
        static func decodeHeader(_ b: [UInt8], index: Int) -> UInt64? {
            guard b.count == headerSize, Array(b[0..<8]) == magic,
                  b.withUnsafeBytes({ crc32c(UnsafeRawBufferPointer(rebasing: $0[0..<60])) })
                    == b.withUnsafeBytes({ UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: 60, as: UInt32.self)) })
            else { return nil }
            var r = ByteReader(b, what: "disk cache segment")
            r.offset = 8
            guard (try? r.u32()) == version, (try? r.u32()) == UInt32(DiskCache.segmentCount),
                  (try? r.u32()) == UInt32(index), (try? r.u32()) != nil,
                  let g = try? r.u64(), g != 0, g <= maxGeneration, Int(g & UInt64(DiskCache.segmentCount - 1)) == index
            else { return nil }
            return g
        }

        /// Reads the header of the segment open on `fd`: its generation, or nil (empty, torn, foreign).
        static func readGeneration(_ fd: FileDescriptor, index: Int) -> UInt64? {
            var b = [UInt8](repeating: 0, count: headerSize)
            guard let n = try? b.withUnsafeMutableBytes({ (p) throws -> Int in try fd.readFully(into: p, at: 0) }),
                  n == headerSize else { return nil }
            return decodeHeader(b, index: index)
        }

        /// What a scan of a segment found.
        struct ScanResult {
            /// Where the run of well-formed records ends: the next append goes here.
            var end: Int64
            /// Records skipped because they fail their checksum.
            var damaged: Int
        }

        /// Scans the records of the segment open on `fd`, up to `limit` bytes: calls `body`
        /// with the offset and header of each record that passes its crc32c, skips those that
        /// do not, and stops at the first that is torn (no record header there, a length over
        /// `maxStoredLength`, or a record running past the file or `limit`).
        static func scan(_ fd: FileDescriptor, limit: Int64, maxStoredLength: Int,
                         _ body: (Int64, PackFormat.RecordHeader) -> Void) throws -> ScanResult {
            let fileLength = min(try fd.byteSize(), limit)
            fd.adviseSequential()
            let reader = WindowedReader(window: 4 << 20, largestRecord: PackFormat.recordHeaderSize + maxStoredLength) {
                try fd.readFully(into: $0, at: $1)
            }
            var offset = Int64(headerSize)
            var damaged = 0
            while offset + Int64(PackFormat.recordHeaderSize) <= fileLength {
                guard let hp = try reader.bytes(at: offset, count: PackFormat.recordHeaderSize),
                      let h = PackFormat.loadRecordHeader(hp), h.storedLength <= maxStoredLength else { break }
                let length = PackFormat.recordHeaderSize + h.storedLength
                guard offset + Int64(length) <= fileLength, let p = try reader.bytes(at: offset, count: length) else { break }
                let record = UnsafeRawBufferPointer(start: p, count: length)
                if PackFormat.recordChecksumMatches(record, header: h) { body(offset, h) } else { damaged += 1 }
                offset += Int64(length)
            }
            return ScanResult(end: offset, damaged: damaged)
        }
    }
}
