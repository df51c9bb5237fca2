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
    public var seconds: Double = 0
}

/// Reads a disk image and stores it as a new image: fixed-size blocks, zero blocks detected
/// without hashing, SHA-256 and LZ4 on every core, dedup against the index, one commit at
/// the end. A failure rolls the store back to the state before the import.
public enum Importer {
    /// Bytes handled per batch (read, hashed and compressed together).
    static let batchBytes = 8 << 20

    public static func importImage(into store: Store, from inputPath: String, as rawName: String,
                                   blockSize: UInt32 = 4096, mode: UInt32 = 0o100644,
                                   progress: ((Int64, Int64) -> Void)? = nil) throws -> ImportReport {
        guard ImageRoot.allowedBlockSizes.contains(blockSize) else {
            throw StoreError.invalidArgument("block size must be one of \(ImageRoot.allowedBlockSizes.map(String.init).joined(separator: ", "))")
        }
        let name = try Namespace.validate(rawName)
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
        do {
            let root = try ingest(store: store, input: input, inputPath: inputPath, size: size, blockSize: Int(blockSize),
                                  report: &report, progress: progress)
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
    static func ingest(store: Store, input: FileDescriptor, inputPath: String, size: Int64, blockSize: Int,
                       report: inout ImportReport, progress: ((Int64, Int64) -> Void)?) throws -> ImageRoot {
        let perBatch = max(1, batchBytes / blockSize)
        let blocks = Int64((UInt64(size) + UInt64(blockSize) - 1) / UInt64(blockSize))
        var builder = TreeBuilder(store: { node in try store.storeNode(node) })
        let bound = Compression.bound(blockSize)
        // Two read buffers: one is hashed and compressed while the next is read.
        let buffers = [UnsafeMutableRawBufferPointer.allocate(byteCount: perBatch * blockSize, alignment: 4096),
                       UnsafeMutableRawBufferPointer.allocate(byteCount: perBatch * blockSize, alignment: 4096)]
        let packed = UnsafeMutableRawBufferPointer.allocate(byteCount: perBatch * bound, alignment: 16)
        defer { buffers.forEach { $0.deallocate() }; packed.deallocate() }
        var hashes = [ChunkHash](repeating: .zero, count: perBatch)
        var codecs = [Codec](repeating: .raw, count: perBatch)
        var packedLengths = [Int](repeating: 0, count: perBatch)
        let workers = max(1, min(8, ProcessInfo.activeCores))
        let readQueue = DispatchQueue(label: "vdiskfs.import.read")

        func readBatch(_ first: Int64, into buf: UnsafeMutableRawBufferPointer) -> Result<Int, StoreError> {
            let want = Int(min(Int64(perBatch), blocks - first)) * blockSize
            let bytes = UnsafeMutableRawBufferPointer(rebasing: buf[0..<want])
            do {
                let n = try input.readFully(into: bytes, at: first * Int64(blockSize))
                let expect = Int(min(Int64(want), size - first * Int64(blockSize)))
                if n < expect { return .failure(.inputUnreadable(path: inputPath, reason: "it shrank while being read")) }
                if n < want { UnsafeMutableRawBufferPointer(rebasing: bytes[n...]).initializeMemory(as: UInt8.self, repeating: 0) }
                return .success(want / blockSize)
            } catch { return .failure(.inputUnreadable(path: inputPath, reason: describe(error))) }
        }

        var first: Int64 = 0
        var current = 0
        var pending: Result<Int, StoreError> = blocks > 0 ? readBatch(0, into: buffers[0]) : .success(0)
        while first < blocks {
            let count = try pending.get()
            let buf = buffers[current]
            // Read the next batch in the background.
            let next = first + Int64(count)
            let group = DispatchGroup()
            var nextResult: Result<Int, StoreError> = .success(0)
            if next < blocks {
                let other = buffers[1 - current]
                readQueue.async(group: group) { nextResult = readBatch(next, into: other) }
            }
            // Hash every non-zero block, on every core.
            hashes.withUnsafeMutableBufferPointer { hp in
                DispatchQueue.concurrentPerform(iterations: workers) { w in
                    var i = w
                    while i < count {
                        let block = UnsafeRawBufferPointer(rebasing: buf[(i * blockSize)..<((i + 1) * blockSize)])
                        hp[i] = isAllZero(block) ? .zero : ChunkHash.of(block)
                        i += workers
                    }
                }
            }
            // Dedup (serial): which blocks are new, first occurrence only.
            var refs = [ChunkRef](repeating: .zero, count: count)
            var fresh: [Int] = []
            var firstInBatch: [ChunkHash: Int] = [:]
            var laterCopies: [(Int, Int)] = []
            for i in 0..<count {
                let h = hashes[i]
                if h.isZero { report.zeroBlocks += 1; continue }
                if let ref = store.existing(h) { refs[i] = ref; report.duplicateBlocks += 1; continue }
                if let j = firstInBatch[h] { laterCopies.append((i, j)); report.duplicateBlocks += 1; continue }
                firstInBatch[h] = i
                fresh.append(i)
            }
            // Compress new blocks, on every core.
            codecs.withUnsafeMutableBufferPointer { cp in
                packedLengths.withUnsafeMutableBufferPointer { lp in
                    DispatchQueue.concurrentPerform(iterations: workers) { w in
                        var k = w
                        while k < fresh.count {
                            let i = fresh[k]
                            let block = UnsafeRawBufferPointer(rebasing: buf[(i * blockSize)..<((i + 1) * blockSize)])
                            let out = UnsafeMutableRawBufferPointer(rebasing: packed[(k * bound)..<((k + 1) * bound)])
                            (cp[k], lp[k]) = Compression.compress(block, into: out)
                            k += workers
                        }
                    }
                }
            }
            // Append (serial), then build the tree in block order.
            for (k, i) in fresh.enumerated() {
                let payload = UnsafeRawBufferPointer(rebasing: packed[(k * bound)..<(k * bound + packedLengths[k])])
                refs[i] = try store.storeEncoded(hash: hashes[i], kind: .data, codec: codecs[k], rawLength: blockSize, payload: payload)
                report.newChunks += 1
                report.newStoredBytes += UInt64(packedLengths[k] + PackFormat.recordHeaderSize)
            }
            for (i, j) in laterCopies { refs[i] = refs[j] }
            for r in refs { try builder.append(r) }
            try store.flushIndexIfLarge()
            report.blocks += UInt64(count)
            first = next
            group.wait()
            pending = nextResult
            current = 1 - current
            progress?(min(first * Int64(blockSize), size), size)
        }
        let (depth, root) = try builder.finish(blocks: UInt64(blocks))
        return ImageRoot(size: UInt64(size), blockSize: UInt32(blockSize), depth: depth, root: root)
    }
}

import Foundation

extension ProcessInfo {
    static var activeCores: Int { ProcessInfo.processInfo.activeProcessorCount }
}
