import CSupport
import Glibc
import SystemPackage

// The syscalls swift-system does not wrap (fsync, flock, ftruncate, fallocate, fstat),
// each wrapped once here, EINTR retried, errors mapped to StoreError at the call site.

/// Retries `body` while it fails with EINTR; returns its result or throws its errno.
@inline(__always)
func retryingOnInterrupt(_ body: () -> Int32) throws -> Int32 {
    while true {
        let r = body()
        if r >= 0 { return r }
        let e = Glibc.errno
        if e == EINTR { continue }
        throw Errno(rawValue: e)
    }
}

extension FileDescriptor {
    /// Flushes the file's data and metadata to stable storage.
    func synchronize() throws { _ = try retryingOnInterrupt { Glibc.fsync(rawValue) } }

    /// Flushes the file's data (and the metadata needed to read it back) to stable storage.
    func synchronizeData() throws { _ = try retryingOnInterrupt { Glibc.fdatasync(rawValue) } }

    /// Takes an advisory whole-file lock without waiting; false when another holder has it.
    func tryLock(exclusive: Bool) throws -> Bool {
        do {
            _ = try retryingOnInterrupt { flock(rawValue, (exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB) }
            return true
        } catch {
            if (error as? Errno) == .wouldBlock { return false }
            throw error
        }
    }

    /// Sets the file's length.
    func truncate(to length: Int64) throws {
        _ = try retryingOnInterrupt { Glibc.ftruncate(rawValue, off_t(length)) }
    }

    /// Allocates disk space for `length` bytes at `offset` without changing the file's
    /// length (fallocate, FALLOC_FL_KEEP_SIZE), so that writes there cannot meet a full disk.
    /// Returns false when the file system cannot (EOPNOTSUPP).
    func reserveSpace(at offset: Int64, length: Int64) throws -> Bool {
        do {
            _ = try retryingOnInterrupt { vdisk_allocate_keeping_size(rawValue, offset, length) }
            return true
        } catch let e as Errno where e == .notSupported || e == .notSupportedOnSocket {
            return false
        }
    }

    /// The file's status.
    func status() throws -> Glibc.stat {
        var st = Glibc.stat()
        _ = try retryingOnInterrupt { Glibc.fstat(rawValue, &st) }
        return st
    }

    /// Size in bytes of a regular file or a block device.
    func byteSize() throws -> Int64 {
        let st = try status()
        if (st.st_mode & S_IFMT) == S_IFBLK {
            var size: UInt64 = 0
            // BLKGETSIZE64 = _IOR(0x12, 114, size_t)
            let blkGetSize64: UInt = 0x8008_1272
            _ = try retryingOnInterrupt { ioctl(rawValue, blkGetSize64, &size) }
            return Int64(size)
        }
        return Int64(st.st_size)
    }

    /// Reads exactly `buffer.count` bytes at `offset`, or fewer only at end of file.
    func readFully(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws -> Int {
        var done = 0
        while done < buffer.count {
            let n: Int
            do {
                n = try read(fromAbsoluteOffset: offset + Int64(done),
                             into: UnsafeMutableRawBufferPointer(rebasing: buffer[done...]))
            } catch let e as Errno { throw e } catch { throw Errno.ioError }
            if n == 0 { break }
            done += n
        }
        return done
    }

    /// Writes all of `buffer` at `offset`.
    func writeFully(_ buffer: UnsafeRawBufferPointer, at offset: Int64) throws {
        var done = 0
        while done < buffer.count {
            do {
                done += try write(toAbsoluteOffset: offset + Int64(done),
                                  UnsafeRawBufferPointer(rebasing: buffer[done...]))
            } catch let e as Errno { throw e } catch { throw Errno.ioError }
        }
    }

    /// Tells the kernel the file will be read sequentially (more read-ahead).
    func adviseSequential() { _ = posix_fadvise(rawValue, 0, 0, POSIX_FADV_SEQUENTIAL) }
}

/// Small whole-file helpers on paths, with the durability steps spelled out.
enum FileIO {
    /// Opens `path`, mapping errors to StoreError with `context`.
    static func open(_ path: String, _ mode: FileDescriptor.AccessMode, options: FileDescriptor.OpenOptions = [],
                     permissions: FilePermissions? = nil, context: String) throws -> FileDescriptor {
        do {
            return try FileDescriptor.open(FilePath(path), mode, options: options.union(.closeOnExec),
                                           permissions: permissions)
        } catch let e as Errno {
            throw StoreError.system(e, "\(context) \(path)", path: path)
        } catch {
            throw StoreError.io(errno: EIO, context: "\(context) \(path)")
        }
    }

    /// Reads a whole (small) file.
    static func readAll(_ path: String) throws -> [UInt8] {
        let fd = try open(path, .readOnly, context: "open")
        defer { try? fd.close() }
        do {
            let size = Int(try fd.byteSize())
            var bytes = [UInt8](repeating: 0, count: size)
            let n = try bytes.withUnsafeMutableBytes { (b) throws -> Int in try fd.readFully(into: b, at: 0) }
            return Array(bytes[0..<n])
        } catch {
            throw StoreError.system(error, "read \(path)", path: path)
        }
    }

    /// Replaces `path` atomically and durably: write a temp file, fsync it, rename it over
    /// `path`, fsync the directory. A crash leaves either the old or the new content.
    static func writeAtomically(_ path: String, _ bytes: [UInt8]) throws {
        let tmp = path + ".tmp"
        let fd = try open(tmp, .writeOnly, options: [.create, .truncate], permissions: [.ownerReadWrite, .groupRead, .otherRead],
                          context: "create")
        do {
            try bytes.withUnsafeBytes { (b) throws in try fd.writeFully(b, at: 0) }
            try fd.synchronize()
            try fd.close()
        } catch {
            try? fd.close()
            unlink(tmp)
            throw StoreError.system(error, "write \(tmp)", path: tmp)
        }
        if rename(tmp, path) != 0 {
            let e = Errno(rawValue: Glibc.errno)
            unlink(tmp)
            throw StoreError.system(e, "rename \(tmp)", path: path)
        }
        try syncDirectory(containing: path)
    }

    /// fsyncs the directory holding `path`, so a rename or create in it is durable.
    static func syncDirectory(containing path: String) throws {
        let dir = parentDirectory(path)
        let fd = try open(dir, .readOnly, options: [.directory], context: "open directory")
        defer { try? fd.close() }
        do { try fd.synchronize() } catch { throw StoreError.system(error, "fsync \(dir)", path: dir) }
    }

    static func parentDirectory(_ path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        let p = String(path[..<slash])
        return p.isEmpty ? "/" : p
    }

    /// Creates a directory (and its parents); succeeds if it exists.
    static func makeDirectory(_ path: String) throws {
        var built = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/") {
            built += "/" + part
            if mkdir(built, 0o755) != 0 && Glibc.errno != EEXIST {
                throw StoreError.system(Errno(rawValue: Glibc.errno), "mkdir \(built)", path: built)
            }
        }
    }

    /// Kind of the file at `path`, or nil when it does not exist.
    static func kind(_ path: String) -> mode_t? {
        var st = Glibc.stat()
        guard stat(path, &st) == 0 else { return nil }
        return st.st_mode & S_IFMT
    }

    /// Names in a directory (without . and ..).
    static func list(_ path: String) throws -> [String] {
        guard let d = opendir(path) else {
            throw StoreError.system(Errno(rawValue: Glibc.errno), "list \(path)", path: path)
        }
        defer { closedir(d) }
        var names: [String] = []
        while let ent = readdir(d) {
            let name = withUnsafeBytes(of: ent.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }
}

extension FileIO {
    /// Creates a fresh private directory under $TMPDIR (or /tmp).
    static func makeTemporaryDirectory(prefix: String) throws -> String {
        let base = getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp"
        var template = Array((base + "/" + prefix + ".XXXXXX").utf8CString)
        guard template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) != nil else {
            throw StoreError.io(errno: errno, context: "create a temporary directory in \(base)")
        }
        return String(cString: template)
    }
}
