import Dispatch
import Foundation
import Glibc
import SystemPackage

/// Writes an image out as a raw disk image: a sparse file (zero blocks become holes) or a
/// block device (zeros written). Blocks are read, verified and decompressed on every core.
public enum Exporter {
    public static func export(from store: Store, image name: String, to outputPath: String, force: Bool = false,
                              progress: ((Int64, Int64) -> Void)? = nil) throws {
        guard let image = try store.resolveImage(name).entry.image else { throw StoreError.noSuchImage(name: name) }
        let existing = FileIO.kind(outputPath)
        if existing == S_IFDIR { throw StoreError.outputUnwritable(path: outputPath, reason: "it is a directory") }
        if existing == S_IFREG && !force { throw StoreError.nameExists(name: outputPath) }
        let isDevice = existing == S_IFBLK
        let output: FileDescriptor
        do {
            output = try FileDescriptor.open(FilePath(outputPath), .writeOnly,
                                             options: isDevice ? [.closeOnExec] : [.create, .truncate, .closeOnExec],
                                             permissions: [.ownerReadWrite, .groupRead, .otherRead])
        } catch { throw StoreError.outputUnwritable(path: outputPath, reason: Importer.describe(error)) }
        var ok = false
        defer {
            try? output.close()
            if !ok && !isDevice { unlink(outputPath) }
        }
        do {
            if isDevice {
                guard try output.byteSize() >= Int64(image.size) else {
                    throw StoreError.outputUnwritable(path: outputPath, reason: "the device is smaller than the image (\(image.size) bytes)")
                }
            } else {
                try output.truncate(to: Int64(image.size))
            }
            try write(store: store, image: image, to: output, writeZeros: isDevice, progress: progress)
            if !isDevice { try output.synchronize() }
        } catch {
            throw StoreError.system(error, "write \(outputPath)", path: outputPath)
        }
        ok = true
    }

    static func write(store: Store, image: ImageRoot, to output: FileDescriptor, writeZeros: Bool,
                      progress: ((Int64, Int64) -> Void)?) throws {
        let bs = Int(image.blockSize)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: TreeNode.fanOut * bs, alignment: 4096)
        defer { buffer.deallocate() }
        let total = Int64(image.size)
        try store.forEachLeaf(image) { first, refs in
            let count = Int(min(UInt64(TreeNode.fanOut), image.blockCount - first))
            let base = Int64(first) * Int64(bs)
            guard let refs else {
                if writeZeros {
                    buffer.initializeMemory(as: UInt8.self, repeating: 0)
                    try writeRun(output, buffer, from: 0, to: count, base: base, bs: bs, size: total)
                }
                progress?(min(base + Int64(count * bs), total), total)
                return true
            }
            // The leaf's blocks in one batch: adjacent records are fetched with one read,
            // each grouped record decoded once, runs decoded on every core.
            let leaf = (0..<count).map { $0 < refs.count ? refs[$0] : ChunkRef.zero }
            try store.readBlocks(leaf, blockSize: bs, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<(count * bs)]))
            // Write runs of non-zero blocks; zero blocks stay holes.
            var i = 0
            while i < count {
                let zero = i >= refs.count || refs[i].isZero
                if zero && !writeZeros { i += 1; continue }
                var j = i + 1
                while j < count && (writeZeros || (j < refs.count && !refs[j].isZero)) { j += 1 }
                try writeRun(output, buffer, from: i, to: j, base: base, bs: bs, size: total)
                i = j
            }
            progress?(min(base + Int64(count * bs), total), total)
            return true
        }
    }

    private static func writeRun(_ output: FileDescriptor, _ buffer: UnsafeMutableRawBufferPointer, from i: Int, to j: Int,
                                 base: Int64, bs: Int, size: Int64) throws {
        let offset = base + Int64(i * bs)
        let length = Int(min(Int64((j - i) * bs), size - offset))
        guard length > 0 else { return }
        try output.writeFully(UnsafeRawBufferPointer(rebasing: buffer[(i * bs)..<(i * bs + length)]), at: offset)
    }
}
