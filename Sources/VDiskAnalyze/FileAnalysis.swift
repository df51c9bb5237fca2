import Dispatch
import Foundation
import VDiskStore

extension Analyzer {
    /// File-level analysis of directory trees (the paper's manifest method): every regular file
    /// is hashed whole with SHA-256, hard-linked copies within a tree count once, and the same
    /// shares as for blocks are computed over file bytes. Symbolic links, devices, FIFOs and
    /// sockets are not followed or counted; the crawl stays on the file system of each root.
    /// Memory: about 100 bytes per file plus its path.
    public static func analyzeDirectories(_ paths: [String], options: AnalyzeOptions) throws -> AnalysisReport {
        try options.validate()
        guard !paths.isEmpty else { throw StoreError.invalidArgument("no directory given") }
        guard paths.count <= AnalyzeOptions.maxImages else {
            throw StoreError.invalidArgument("at most \(AnalyzeOptions.maxImages) directories can be compared in one run")
        }
        let start = DispatchTime.now()
        let crawls = try paths.map { try crawlTree($0) }
        var list: [(tree: Int, path: String, size: Int64)] = []
        for (t, c) in crawls.enumerated() { for f in c.files { list.append((t, f.path, f.size)) } }
        let total = list.reduce(Int64(0)) { $0 + $1.size }

        let results = UnsafeMutableBufferPointer<FileDigest?>.allocate(capacity: max(1, list.count))
        results.initialize(repeating: nil)
        defer { results.deallocate() }
        let lock = NSLock()
        var nextIndex = 0
        var done: Int64 = 0
        options.progress?("files", 0, total)
        DispatchQueue.concurrentPerform(iterations: min(options.workers, max(1, list.count))) { _ in
            let hasher = BlockHasher()
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
            defer { buffer.deallocate() }
            while true {
                lock.lock()
                let i = nextIndex
                nextIndex += 1
                lock.unlock()
                guard i < list.count else { return }
                let r = digestFile(list[i].path, hasher: hasher, buffer: buffer)
                results[i] = r
                lock.lock()
                done += list[i].size
                let d = done
                options.progress?("files", d, total)
                lock.unlock()
            }
        }

        let n = paths.count
        var acc = ShareAccumulator(images: n)
        var contents: [ChunkHash: (mask: UInt64, size: Int64)] = [:]
        var bytes = Array(repeating: Int64(0), count: n)
        var zeroBytes = Array(repeating: Int64(0), count: n)
        var counted = Array(repeating: 0, count: n)
        var skipped = crawls.map { $0.skipped }
        for (i, f) in list.enumerated() {
            guard let r = results[i] else { skipped[f.tree] += 1; continue }
            counted[f.tree] += 1
            bytes[f.tree] += r.size
            if r.allZero { zeroBytes[f.tree] += r.size }
            guard r.size > 0 else { continue }
            contents[r.hash, default: (0, r.size)].mask |= UInt64(1) << UInt64(f.tree)
        }
        for (_, v) in contents { acc.add(mask: v.mask, length: v.size, csize: 0) }
        let labels = makeLabels(paths)
        let images = (0..<n).map { i in
            ImageReport(
                path: paths[i], label: labels[i], size: bytes[i], zeroShare: share(zeroBytes[i], of: bytes[i]),
                selfDuplication: share(bytes[i] - acc.uniqueBytes[i], of: bytes[i]), nonzeroBytes: bytes[i],
                uniqueBytes: acc.uniqueBytes[i], estimatedStoreBytes: nil, perBlockSize: [],
                files: counted[i], hardLinksDiscounted: crawls[i].hardLinksDiscounted, skipped: skipped[i])
        }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
        return AnalysisReport(
            method: .files, blockSize: nil, images: images, matrix: acc.matrix(nonzero: bytes), blockSizes: [],
            spilledRuns: 0, spilledBytes: 0, holeBytes: 0, seconds: seconds, bytesAnalyzed: bytes.reduce(0, +))
    }
}

struct FileDigest {
    var hash: ChunkHash
    var size: Int64
    var allZero: Bool
}

struct TreeCrawl {
    var files: [(path: String, size: Int64)] = []
    var hardLinksDiscounted = 0
    var skipped = 0
}

private struct InodeKey: Hashable {
    var dev: UInt64
    var ino: UInt64
}

/// The regular files under `root` (hard links once), without crossing into other file systems.
func crawlTree(_ root: String) throws -> TreeCrawl {
    var st = stat()
    guard stat(root, &st) == 0 else { throw StoreError.inputUnreadable(path: root, reason: errnoText()) }
    guard st.st_mode & S_IFMT == S_IFDIR else { throw StoreError.inputUnreadable(path: root, reason: "not a directory") }
    guard let top = opendir(root) else { throw StoreError.inputUnreadable(path: root, reason: errnoText()) }
    closedir(top)
    let device = st.st_dev
    var crawl = TreeCrawl()
    var seen = Set<InodeKey>()
    var stack = [root]
    while let dir = stack.popLast() {
        guard let d = opendir(dir) else { crawl.skipped += 1; continue }
        defer { closedir(d) }
        let prefix = dir.hasSuffix("/") ? dir : dir + "/"
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) {
                String(cString: $0.baseAddress!.assumingMemoryBound(to: CChar.self))
            }
            if name == "." || name == ".." { continue }
            let path = prefix + name
            var s = stat()
            guard lstat(path, &s) == 0 else { crawl.skipped += 1; continue }
            switch s.st_mode & S_IFMT {
            case S_IFDIR:
                if s.st_dev == device { stack.append(path) }
            case S_IFREG:
                if s.st_nlink > 1 && !seen.insert(InodeKey(dev: UInt64(s.st_dev), ino: UInt64(s.st_ino))).inserted {
                    crawl.hardLinksDiscounted += 1
                    continue
                }
                crawl.files.append((path, Int64(s.st_size)))
            default:
                continue
            }
        }
    }
    return crawl
}

/// SHA-256 of a whole file, its length as read, and whether every byte is zero; nil when it
/// cannot be read (the crawl counts it as skipped).
func digestFile(_ path: String, hasher: BlockHasher, buffer: UnsafeMutableRawBufferPointer) -> FileDigest? {
    let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var st = stat()
    guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { return nil }
    _ = posix_fadvise(fd, 0, 0, Int32(POSIX_FADV_SEQUENTIAL))
    hasher.begin()
    var size: Int64 = 0
    var zero = true
    while true {
        let n = read(fd, buffer.baseAddress!, buffer.count)
        if n < 0 {
            if errno == EINTR { continue }
            return nil
        }
        if n == 0 { break }
        let chunk = UnsafeRawBufferPointer(rebasing: buffer[0..<n])
        hasher.update(chunk)
        if zero && !isAllZero(chunk) { zero = false }
        size += Int64(n)
    }
    guard let h = hasher.finish() else { return nil }
    return FileDigest(hash: h, size: size, allZero: zero)
}
