// fuzz-disk: a disk image as import sees it. The input is the whole disk; DiskLayout.probe
// reads its partition table (MBR with extended/logical partitions, GPT) and the ext2/3/4
// superblock, group descriptors and block bitmaps of each partition (or of the whole disk).
// Contract: never crashes; anything it cannot understand stays raw (a note, no free blocks).
import FuzzSupport
@testable import VDiskStore

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> Int32 {
    setUpFuzzTarget(seeds: seeds)
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = bytesOf(data, size)
    let disk = reader(bytes)
    if skipKnownBugs, knownBug(bytes, disk) != nil { return -1 }  // -1: not added to the corpus
    // The image block size import uses (4 KiB, the default) and the largest one.
    for blockSize in [4096, 65536] {
        let layout = DiskLayout.probe(disk, blockSize: blockSize)
        if fuzzVerbose { print("block size \(blockSize): \(layout.freeBytes) bytes free; \(layout.notes)") }
        // Free blocks lie inside the disk.
        let blocks = (bytes.count + blockSize - 1) / blockSize
        precondition(layout.freeBytes <= UInt64(blocks) * UInt64(blockSize), "more bytes free than the disk holds")
        if layout.freeBytes > 0 { precondition(!layout.isFree(blocks + 64), "a block past the disk is free") }
    }
    return 0
}

func reader(_ bytes: [UInt8]) -> DiskReader {
    DiskReader(size: UInt64(bytes.count)) { buffer, offset in
        // DiskReader never asks past the end, but a reader must not trust that.
        guard offset < UInt64(bytes.count) else { return 0 }
        let n = min(buffer.count, bytes.count - Int(offset))
        if n > 0 { bytes.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress! + Int(offset), byteCount: n) } }
        return n
    }
}

// MARK: known bugs
//
// With VDISKFS_FUZZ_SKIP_KNOWN=1, inputs that would hit a crash already reported are skipped
// so that a run can go past them (the crash inputs are in fuzz/regressions/fuzz-disk/). Each
// check mirrors the parser up to the faulty expression. Delete a check once its bug is fixed.

/// The name of the known bug `bytes` triggers, if any.
func knownBug(_ b: [UInt8], _ disk: DiskReader) -> String? {
    func le32(_ o: Int) -> UInt64 { UInt64(getLE32(b, o)) }
    func le64(_ o: Int) -> UInt64 { le32(o) | le32(o + 4) << 32 }
    func mulOverflows(_ a: UInt64, _ m: UInt64) -> Bool { a.multipliedReportingOverflow(by: m).overflow }
    // GPT (PartitionTable.gpt), reached from the first MBR entry of type 0xEE.
    if b.count >= 512, b[510] == 0x55, b[511] == 0xAA,
       (0..<4).contains(where: { b[446 + $0 * 16 + 4] == 0xEE && le32(446 + $0 * 16 + 12) != 0 }), b.count >= 604, Array(b[512..<520]) == Array("EFI PART".utf8) {
        let lba = le64(512 + 0x48), count = Int(le32(512 + 0x50)), size = Int(le32(512 + 0x54))
        if size >= 128, size <= 4096, count <= 1024 {
            if mulOverflows(lba, 512) { return "gpt-table-offset" }          // PartitionTable.swift:48
            let start = Int(clamping: lba * 512)
            if start < b.count, b.count - start >= count * size {
                for k in 0..<count {
                    let e = start + k * size
                    if b[e..<(e + 16)].allSatisfy({ $0 == 0 }) { continue }
                    let first = le64(e + 32), last = le64(e + 40)
                    guard last >= first else { continue }
                    if mulOverflows(first, 512) || last - first == UInt64.max || mulOverflows(last - first + 1, 512) {
                        return "gpt-entry-bounds"                             // PartitionTable.swift:56
                    }
                    if (first * 512).addingReportingOverflow((last - first + 1) * 512).overflow {
                        return "gpt-entry-end"                                // PartitionTable.swift:58
                    }
                }
            }
        }
    }
    // ext superblock (Ext4Bitmap.init): block count × block size overflows.
    let parts = (try? PartitionTable.read(disk)) ?? []
    for base in parts.isEmpty ? [UInt64(0)] : parts.map(\.offset) {
        let sb = Int(clamping: base) + 1024
        guard b.count >= sb + 1024, b[sb + 0x38] == 0x53, b[sb + 0x39] == 0xEF, le32(sb + 0x18) <= 6 else { continue }
        let bs = UInt64(1024) << le32(sb + 0x18)
        let count = le32(sb + 0x04) | (le32(sb + 0x60) & 0x80 != 0 ? le32(sb + 0x150) << 32 : 0)
        if mulOverflows(count, bs) { return "ext-block-count" }               // Ext4Bitmap.swift:46
    }
    return nil
}

/// Synthetic partition tables (make-corpus.sh adds real ones with ext file systems).
func seeds() -> [(String, [UInt8])] {
    func mbrEntry(_ b: inout [UInt8], _ base: Int, _ i: Int, type: UInt8, start: UInt32, count: UInt32) {
        let e = base + 446 + i * 16
        b[e + 4] = type
        putLE32(&b, e + 8, start)
        putLE32(&b, e + 12, count)
    }
    // MBR: two primaries and an extended partition holding a chain of two logical ones.
    var mbr = [UInt8](repeating: 0, count: 64 * 1024)
    mbr[510] = 0x55; mbr[511] = 0xAA
    mbrEntry(&mbr, 0, 0, type: 0x83, start: 8, count: 16)
    mbrEntry(&mbr, 0, 1, type: 0x83, start: 24, count: 16)
    mbrEntry(&mbr, 0, 2, type: 0x05, start: 40, count: 80)
    for (k, ebr) in [40, 64].enumerated() {
        let o = ebr * 512
        mbr[o + 510] = 0x55; mbr[o + 511] = 0xAA
        mbrEntry(&mbr, o, 0, type: 0x83, start: 8, count: 8)
        if k == 0 { mbrEntry(&mbr, o, 1, type: 0x05, start: 24, count: 40) }
    }
    // GPT: protective MBR, header at LBA 1, 4 entries of 128 bytes at LBA 2.
    var gpt = [UInt8](repeating: 0, count: 32 * 1024)
    gpt[510] = 0x55; gpt[511] = 0xAA
    mbrEntry(&gpt, 0, 0, type: 0xEE, start: 1, count: 63)
    gpt.replaceSubrange(512..<520, with: Array("EFI PART".utf8))
    putLE64(&gpt, 512 + 0x48, 2)
    putLE32(&gpt, 512 + 0x50, 4)
    putLE32(&gpt, 512 + 0x54, 128)
    for (i, (first, last)) in [(8, 23), (24, 63)].enumerated() {
        let e = 1024 + i * 128
        gpt[e] = 0xAF; gpt[e + 1] = 0x3D  // a nonzero type GUID
        putLE64(&gpt, e + 32, UInt64(first))
        putLE64(&gpt, e + 40, UInt64(last))
    }
    return [("mbr-extended", mbr), ("gpt-two", gpt)]
}
