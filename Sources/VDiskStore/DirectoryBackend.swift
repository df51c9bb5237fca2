import Foundation
import Glibc
import SystemPackage

/// A store in a local directory (see vdiskfs-format(5)):
///
///     STORE/vdiskfs.json   format version and store id (written once at init)
///     STORE/lock           flock: exclusive for writers, shared for readers
///     STORE/packs/         append-only pack files of records
///     STORE/index/chunks   hash → location table (derived; rebuildable from packs)
///     STORE/roots/current  the committed root (replaced atomically)
///
/// One host writes it (the flock says which process), so the root needs no compare-and-set
/// and pack numbers no claiming. Durability: packs fsynced with their directory when new;
/// every other file replaced by temp + fsync + rename + directory fsync.
public final class DirectoryBackend: StoreBackend, @unchecked Sendable {
    public let path: String
    public var name: String { path }
    public var isShared: Bool { false }
    public var localDirectory: String { path }
    private let packDirectory: String
    /// Open packs for reading, bounded; a handle closes when its last reader lets go.
    private let handles = Locked<[UInt64: Handle]>([:])
    static let maxOpenPacks = 256
    static let configName = "vdiskfs.json"

    private final class Handle: @unchecked Sendable {
        let fd: FileDescriptor
        init(fd: FileDescriptor) { self.fd = fd }
        deinit { try? fd.close() }
    }

    public init(path: String) {
        self.path = path
        self.packDirectory = path + "/packs"
    }

    // MARK: config

    public func readConfig() throws -> [UInt8] {
        guard let kind = FileIO.kind(path) else { throw StoreError.storeMissing(path: path) }
        guard kind == S_IFDIR, FileIO.kind(path + "/" + Self.configName) != nil else { throw StoreError.notAStore(path: path) }
        return try FileIO.readAll(path + "/" + Self.configName)
    }

    public func prepareCreate() throws {
        if let kind = FileIO.kind(path) {
            guard kind == S_IFDIR else { throw StoreError.nameExists(name: path) }
            let existing = try FileIO.list(path)
            if existing.contains(Self.configName) { throw StoreError.nameExists(name: path) }
            guard existing.isEmpty else {
                throw StoreError.invalidArgument("\(path) is not empty; a store must be created in a new or empty directory")
            }
        } else {
            try FileIO.makeDirectory(path)
        }
        for d in ["packs", "roots"] { try FileIO.makeDirectory(path + "/" + d) }
    }

    public func writeConfig(_ bytes: [UInt8]) throws {
        try FileIO.writeAtomically(path + "/" + Self.configName, bytes)
        try FileIO.syncDirectory(containing: path)
    }

    // MARK: packs

    func packPath(_ pack: UInt64) -> String { packDirectory + "/" + PackFormat.fileName(pack) }

    public func packNumbers() throws -> [UInt64] {
        try FileIO.list(packDirectory).compactMap(PackFormat.packNumber(fileName:)).sorted()
    }

    public func packSize(_ pack: UInt64) throws -> Int64? {
        var st = Glibc.stat()
        if stat(packPath(pack), &st) == 0 { return Int64(st.st_size) }
        if errno == ENOENT { return nil }
        throw StoreError.io(errno: errno, context: "stat \(packPath(pack))")
    }

    /// The pack takes its name only once its header is written (a temporary file, linked):
    /// a kill between creating and writing must not leave a headerless pack, which would
    /// stop the store from opening and verifying. (One writer: the temporary name is fixed,
    /// and one a kill left behind is replaced.)
    public func createPack(_ pack: UInt64, header: [UInt8]) throws -> PackOutput? {
        let p = packPath(pack)
        let temporary = p + ".new"
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.open(FilePath(temporary), .readWrite, options: [.create, .truncate, .closeOnExec],
                                         permissions: [.ownerReadWrite, .groupRead, .otherRead])
        } catch {
            throw StoreError.system(error, "create pack", path: p)
        }
        do { try header.withUnsafeBytes { (h) throws in try fd.writeFully(h, at: 0) } } catch {
            try? fd.close()
            unlink(temporary)
            throw StoreError.system(error, "write pack header", path: p)
        }
        let linked = link(temporary, p) == 0 ? 0 : errno
        unlink(temporary)
        guard linked == 0 else {
            try? fd.close()
            if linked == EEXIST { return nil }
            throw StoreError.system(Errno(rawValue: linked), "create pack", path: p)
        }
        return FileOutput(fd: fd, path: p)
    }

    /// A pack file being appended to. Its directory is fsynced with the first synchronize,
    /// so a new pack's name is as durable as its bytes.
    private final class FileOutput: PackOutput {
        let fd: FileDescriptor
        let path: String
        var closed = false
        var nameDurable = false
        init(fd: FileDescriptor, path: String) { self.fd = fd; self.path = path }
        deinit { close() }

        func write(_ bytes: UnsafeRawBufferPointer, at offset: Int64) throws {
            do { try fd.writeFully(bytes, at: offset) } catch { throw StoreError.system(error, "write pack", path: path) }
        }

        func synchronize() throws {
            do { try fd.synchronizeData() } catch { throw StoreError.system(error, "fsync pack", path: path) }
            if !nameDurable {
                try FileIO.syncDirectory(containing: path)
                nameDurable = true
            }
        }

        func close() {
            guard !closed else { return }
            closed = true
            try? fd.close()
        }
    }

    private func handle(_ pack: UInt64) throws -> Handle? {
        if let h = handles.withLock({ $0[pack] }) { return h }
        let p = packPath(pack)
        let fd: FileDescriptor
        do { fd = try FileDescriptor.open(FilePath(p), .readOnly, options: [.closeOnExec]) }
        catch let e as Errno {
            if e == .noSuchFileOrDirectory { return nil }
            throw StoreError.system(e, "open pack", path: p)
        }
        let h = Handle(fd: fd)
        return handles.withLock { open in
            if let existing = open[pack] { return existing }
            if open.count >= Self.maxOpenPacks, let victim = open.keys.first { open[victim] = nil }
            open[pack] = h
            return h
        }
    }

    public func readPack(_ pack: UInt64, at offset: Int64, into buffer: UnsafeMutableRawBufferPointer) throws -> Int? {
        guard let h = try handle(pack) else { return nil }
        do { return try h.fd.readFully(into: buffer, at: offset) }
        catch { throw StoreError.system(error, "read pack \(PackFormat.fileName(pack))", path: path) }
    }

    public func removePacks(_ packs: [UInt64]) throws {
        guard !packs.isEmpty else { return }
        handles.withLock { open in for p in packs { open[p] = nil } }
        for p in packs where unlink(packPath(p)) != 0 && errno != ENOENT {
            throw StoreError.io(errno: errno, context: "remove \(packPath(p))")
        }
        try FileIO.syncDirectory(containing: packPath(0))
    }

    public func truncatePack(_ pack: UInt64, to length: Int64) throws {
        handles.withLock { $0[pack] = nil }
        let p = packPath(pack)
        if length == 0 { unlink(p) } else { Glibc.truncate(p, off_t(length)) }
        try FileIO.syncDirectory(containing: p)
    }

    public func writePackSummary(_ pack: UInt64, _ bytes: [UInt8]) throws {}
    public func readPackSummary(_ pack: UInt64) throws -> [UInt8]? { nil }
    public func removePackSummaries(_ packs: [UInt64]) throws {}

    public func forgetOpenPacks() { handles.withLock { $0.removeAll() } }

    // MARK: root

    public func readRoot() throws -> (bytes: [UInt8], version: UInt64)? {
        let p = path + "/roots/current"
        guard FileIO.kind(p) != nil else { return nil }
        return (try FileIO.readAll(p), 0)
    }

    public func replaceRoot(_ bytes: [UInt8], ifVersion version: UInt64?) throws -> UInt64? {
        // The store lock makes this process the only writer: nothing to compare.
        try FileIO.writeAtomically(path + "/roots/current", bytes)
        return 0
    }

    // MARK: lock and space

    public func lock(_ mode: StoreLockMode, purpose: String) throws -> StoreLock {
        let lockPath = path + "/lock"
        let exclusive = mode != .read
        let fd = try FileIO.open(lockPath, exclusive ? .readWrite : .readOnly, options: exclusive ? [.create] : [],
                                 permissions: [.ownerReadWrite, .groupRead, .otherRead], context: "open lock")
        let got: Bool
        do { got = try fd.tryLock(exclusive: exclusive) } catch { try? fd.close(); throw StoreError.system(error, "lock", path: lockPath) }
        guard got else {
            let holder = (try? FileIO.readAll(lockPath)).map { String(decoding: $0, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) } ?? ""
            try? fd.close()
            throw StoreError.storeLocked(path: path, holder: holder.isEmpty ? "another process" : holder)
        }
        if exclusive {
            let note = "pid \(getpid()) (vdiskfs \(purpose)) since \(ISO8601DateFormatter().string(from: Date()))\n"
            try? fd.truncate(to: 0)
            _ = try? Array(note.utf8).withUnsafeBytes { (b) throws in try fd.writeFully(b, at: 0) }
        }
        return FileLock(fd: fd)
    }

    private final class FileLock: StoreLock, @unchecked Sendable {
        private let fd: Locked<FileDescriptor?>
        init(fd: FileDescriptor) { self.fd = Locked(fd) }
        deinit { release() }
        func release() { fd.withLock { f in try? f?.close(); f = nil } }
    }

    // One host: its journal is STORE/journal (gc looks there) and its index is the store's.
    public func noteJournal(_ id: String, pending: Bool) throws {}
    public func pendingJournals() throws -> [String] { [] }
    public func recordCollectedPacks(_ packs: [UInt64]) throws {}
    public func collectedPacks() throws -> [UInt64] { [] }
    public func removeLeaseObjects() throws {}

    public func acquireLease(image name: String, purpose: String) throws -> ImageLease { SingleWriterLease() }
    public func leases() throws -> [LeaseInfo] { [] }
    public func breakLease(image name: String) throws -> Bool { false }

    public func space() throws -> (totalBytes: UInt64, freeBytes: UInt64, availableBytes: UInt64) {
        var s = statvfs()
        guard statvfs(path, &s) == 0 else { throw StoreError.io(errno: errno, context: "statfs \(path)") }
        let unit = UInt64(s.f_frsize)
        return (UInt64(s.f_blocks) * unit, UInt64(s.f_bfree) * unit, UInt64(s.f_bavail) * unit)
    }
}
