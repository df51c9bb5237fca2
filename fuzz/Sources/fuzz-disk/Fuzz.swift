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
