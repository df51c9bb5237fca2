import Dispatch
import Glibc
import SystemPackage

/// What an import did.
public struct ImportReport: Sendable {
    public var name: String
    public var size: UInt64
    public var blocks: UInt64 = 0
    /// Blocks of zeros (not stored).
    public var zeroBlocks: UInt64 = 0
    /// Blocks already in the store (or earlier in this image).
    public var duplicateBlocks: UInt64 = 0
    /// New chunks written and their bytes as stored (after compression).
    public var newChunks: UInt64 = 0
    public var newStoredBytes: UInt64 = 0
    /// Bytes in blocks a file system marks free (or a clean journal's log): not read, stored
    /// as zeros.
    public var freeBytesSkipped: UInt64 = 0
    /// What file-system-aware import found (partitions, file systems, warnings).
    public var layoutNotes: [String] = []
    public var seconds: Double = 0
}

/// Reads a disk image and stores it as a new image: fixed-size blocks, zero blocks detected
/// without hashing, SHA-256 and LZ4 on every core, dedup against the index, one commit at
/// the end. A failure rolls the store back to the state before the import.
public enum Importer {
    /// Bytes handled per batch (read, hashed and compressed together).
    static let batchBytes = 8 << 20
    /// Raw bytes of a grouped record at most, unless the caller says otherwise: new blocks
    /// that lie near each other are compressed together up to this size (see BlockEncoder).
    public static let defaultGroupBytes = 32 << 10
    /// Group sizes import accepts: 0 (no groups), or up to 64 KiB (16 chunks of 4 KiB).
    public static let allowedGroupBytes = [0, 8 << 10, 16 << 10, 32 << 10, 64 << 10]

    public static func importImage(into store: Store, from inputPath: String, as rawName: String,
                                   blockSize: UInt32 = 4096, mode: UInt32 = 0o100644, fileSystemAware: Bool = true,
                                   groupBytes: Int = Importer.defaultGroupBytes,
                                   progress: ((Int64, Int64) -> Void)? = nil) throws -> ImportReport {
        guard ImageRoot.allowedBlockSizes.contains(blockSize) else {
            throw StoreError.invalidArgument("block size must be one of \(ImageRoot.allowedBlockSizes.map(String.init).joined(separator: ", "))")
        }
        guard allowedGroupBytes.contains(groupBytes) else {
            throw StoreError.invalidArgument("group size must be 0 (none), 8K, 16K, 32K or 64K")
        }
        let name = try Namespace.validate(rawName)
        return try store.withLeases([name], purpose: "import") {
            try importLeased(into: store, from: inputPath, as: name, blockSize: blockSize, mode: mode,
                             fileSystemAware: fileSystemAware, groupBytes: groupBytes, progress: progress)
        }
    }

    private static func importLeased(into store: Store, from inputPath: String, as name: String,
                                     blockSize: UInt32, mode: UInt32, fileSystemAware: Bool, groupBytes: Int,
                                     progress: ((Int64, Int64) -> Void)?) throws -> ImportReport {
        var probe = store.namespace
        try probe.addImage(name, root: .empty(size: 0, blockSize: blockSize), now: 0)  // name clash → error, nothing written

        let input: FileDescriptor
        do { input = try FileDescriptor.open(FilePath(inputPath), .readOnly, options: [.closeOnExec]) }
        catch { throw StoreError.inputUnreadable(path: inputPath, reason: describe(error)) }
        defer { try? input.close() }
        let size: Int64
        do {
            let st = try input.status()
            let kind = st.st_mode & S_IFMT
            guard kind == S_IFREG || kind == S_IFBLK else {
                throw StoreError.inputUnreadable(path: inputPath, reason: kind == S_IFDIR ? "it is a directory" : "it is not a regular file or block device")
            }
            size = try input.byteSize()
        } catch let e as StoreError { throw e } catch { throw StoreError.inputUnreadable(path: inputPath, reason: describe(error)) }
        input.adviseSequential()

        let start = DispatchTime.now()
        var report = ImportReport(name: name, size: UInt64(size))
        // File-system-aware: blocks a file system marks free are stored as zeros.
        let layout = fileSystemAware ? DiskLayout.probe(input, size: UInt64(size), blockSize: Int(blockSize)) : nil
        report.layoutNotes = layout?.notes ?? []
        do {
            let root = try ingest(store: store, input: input, inputPath: inputPath, size: size, blockSize: Int(blockSize),
                                  layout: layout, groupBytes: store.writesGroups ? groupBytes : 0, report: &report, progress: progress)
            var ns = store.namespace
            let now = PackWriter.nowNanoseconds()
            try ns.addImage(name, root: root, mode: mode, now: now)
            try store.commit(ns)
        } catch {
            try? store.rollback()
            throw StoreError.system(error, "import", path: store.path)
        }
        report.seconds = Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
        return report
    }

    static func describe(_ error: any Error) -> String {
        if let e = error as? Errno { return String(describing: e) }
        if let e = error as? StoreError { return e.description }
        return String(describing: error)
    }

    /// Streams the input into the store; returns the image's root.
    static func ingest(store: Store, input: FileDescriptor, inputPath: String, size: Int64, blockSize: Int, layout: DiskLayout?,
                       groupBytes: Int, report: inout ImportReport, progress: ((Int64, Int64) -> Void)?) throws -> ImageRoot {
        let perBatch = max(1, batchBytes / blockSize)
        let blocks = Int64((UInt64(size) + UInt64(blockSize) - 1) / UInt64(blockSize))
        var builder = TreeBuilder(store: { node in try store.storeNode(node) })
        // Two read buffers: one is hashed and compressed while the next is read.
        let buffers = [UnsafeMutableRawBufferPointer.allocate(byteCount: perBatch * blockSize, alignment: 4096),
                       UnsafeMutableRawBufferPointer.allocate(byteCount: perBatch * blockSize, alignment: 4096)]
        defer { buffers.forEach { $0.deallocate() } }
        let encoder = BlockEncoder(blockSize: blockSize, capacity: perBatch, groupBytes: groupBytes)
        var tally = BlockEncoder.Tally()
        let readQueue = DispatchQueue(label: "vdiskfs.import.read")

        // Per buffer: which of its blocks a file system marks free. Those are never read
        // (nor hashed): they are zero blocks.
        let freeMasks = [UnsafeMutableBufferPointer<Bool>.allocate(capacity: perBatch),
                         UnsafeMutableBufferPointer<Bool>.allocate(capacity: perBatch)]
        defer { freeMasks.forEach { $0.deallocate() } }
        let anyFree = (layout?.freeBytes ?? 0) > 0
        /// Runs of free blocks shorter than this are read through (fewer, larger reads).
        let gapBlocks = max(1, (64 << 10) / blockSize)

        func readBatch(_ first: Int64, into buf: UnsafeMutableRawBufferPointer, free mask: UnsafeMutableBufferPointer<Bool>) -> Result<Int, StoreError> {
            let count = Int(min(Int64(perBatch), blocks - first))
            do {
                /// Reads blocks a..<b of the batch; zeros past the end of the input.
                func read(_ a: Int, _ b: Int) throws -> StoreError? {
                    let bytes = UnsafeMutableRawBufferPointer(rebasing: buf[(a * blockSize)..<(b * blockSize)])
                    let at = (first + Int64(a)) * Int64(blockSize)
                    let n = try input.readFully(into: bytes, at: at)
                    let expect = Int(min(Int64(bytes.count), size - at))
                    if n < expect { return .inputUnreadable(path: inputPath, reason: "it shrank while being read") }
                    if n < bytes.count { UnsafeMutableRawBufferPointer(rebasing: bytes[n...]).initializeMemory(as: UInt8.self, repeating: 0) }
                    return nil
                }
                guard anyFree, let layout else {
                    mask.update(repeating: false)
                    if let e = try read(0, count) { return .failure(e) }
                    return .success(count)
                }
                for i in 0..<count { mask[i] = layout.isFree(Int(first) + i) }
                var i = 0
                while i < count {
                    if mask[i] { i += 1; continue }
                    // A run to read: up to the next stretch of at least gapBlocks free blocks.
                    // (j ends past the last block looked at; the free ones just before it are not read.)
                    var j = i + 1, freeRun = 0
                    while j < count && freeRun < gapBlocks {
                        freeRun = mask[j] ? freeRun + 1 : 0
                        j += 1
                    }
                    let end = j - freeRun
                    if let e = try read(i, end) { return .failure(e) }
                    i = end
                }
                return .success(count)
            } catch { return .failure(.inputUnreadable(path: inputPath, reason: describe(error))) }
        }

        var first: Int64 = 0
        var current = 0
        var pending: Result<Int, StoreError> = blocks > 0 ? readBatch(0, into: buffers[0], free: freeMasks[0]) : .success(0)
        while first < blocks {
            let count = try pending.get()
            let buf = buffers[current]
            // Read the next batch in the background.
            let next = first + Int64(count)
            let group = DispatchGroup()
            var nextResult: Result<Int, StoreError> = .success(0)
            if next < blocks {
                let other = buffers[1 - current], otherMask = freeMasks[1 - current]
                readQueue.async(group: group) { nextResult = readBatch(next, into: other, free: otherMask) }
            }
            let mask = UnsafeBufferPointer(freeMasks[current])
            if anyFree { report.freeBytesSkipped += UInt64(mask[0..<count].reduce(0) { $0 + ($1 ? 1 : 0) }) * UInt64(blockSize) }
            let refs = try encoder.store(UnsafeRawBufferPointer(buf), count: count, into: store, tally: &tally,
                                         knownZero: anyFree ? mask : nil)
            for r in refs { try builder.append(r) }
            report.blocks += UInt64(count)
            first = next
            group.wait()
            pending = nextResult
            current = 1 - current
            progress?(min(first * Int64(blockSize), size), size)
        }
        report.zeroBlocks = tally.zero
        report.duplicateBlocks = tally.duplicate
        report.newChunks = tally.new
        report.newStoredBytes = tally.newStoredBytes
        let (depth, root) = try builder.finish(blocks: UInt64(blocks))
        return ImageRoot(size: UInt64(size), blockSize: UInt32(blockSize), depth: depth, root: root)
    }
}
