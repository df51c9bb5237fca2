import CRados
import Foundation
import VDiskStore

/// Objects in one namespace of one pool (a librados io context). Thread-safe: any number of
/// threads may use one pool at once. Object names are arbitrary strings without NUL bytes
/// ('/' is an ordinary character).
///
/// Failures throw `StoreError.io(errno:context:)` ("rados read pack.000001: ..."), or
/// `diskFull` for ENOSPC/EDQUOT; the expected outcomes ("no such object", "exists already",
/// "changed meanwhile", "lock busy") are nil or false results instead.
///
/// Writes to a full pool fail with ENOSPC/EDQUOT at once (the pool "full try" flag) rather than
/// waiting for space. Every operation gives up after the cluster's `operationTimeout`.
public final class RadosPool: @unchecked Sendable {
    /// The connection this pool belongs to (kept alive as long as the pool).
    public let cluster: RadosCluster
    /// The pool's name.
    public let name: String
    /// The namespace every object name is in; "" is the default namespace.
    public let namespace: String
    let io: rados_ioctx_t

    init(cluster: RadosCluster, name: String, namespace: String) throws {
        try checkName(name, "pool")
        try checkName(namespace, "namespace")
        let (io, rc) = cluster.openIOContext(name)
        if rc == -ENOENT { throw StoreError.storeMissing(path: "rados://\(name)") }
        guard rc == 0, let io else { throw StoreError.rados(rc, "rados open pool \(name)") }
        rados_ioctx_set_namespace(io, namespace)
        rados_set_pool_full_try(io)
        self.cluster = cluster
        self.name = name
        self.namespace = namespace
        self.io = io
    }

    deinit { rados_ioctx_destroy(io) }

    /// The error for librados result `rc` while doing `what` to `object`.
    func failure(_ rc: Int32, _ what: String, _ object: String) -> StoreError {
        StoreError.rados(rc, "rados \(what) \(object)", pool: name)
    }

    // MARK: Reading

    /// Reads up to `buffer.count` bytes of `object` from `offset` (rados_read); returns how
    /// many were read (fewer at the object's end, 0 past it), nil when there is no such object.
    /// One call reads at most 2 GiB - 1 bytes.
    public func read(_ object: String, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws -> Int? {
        try checkName(object, "object")
        guard buffer.count > 0 else { return try size(object) == nil ? nil : 0 }
        try checkReadSize(buffer.count)
        let rc = rados_read(io, object, buffer.baseAddress!.assumingMemoryBound(to: CChar.self),
                            buffer.count, offset)
        if rc == -ENOENT { return nil }
        guard rc >= 0 else { throw failure(rc, "read", object) }
        return Int(rc)
    }

    /// The whole of `object` and its version, read atomically (one read operation: stat and
    /// read), or nil when there is no such object. The version is what ``replace(_:with:ifVersion:)``
    /// takes. Objects larger than `sizeHint` bytes cost a second round trip.
    public func readAll(_ object: String, sizeHint: Int = 1 << 16) throws -> (bytes: [UInt8], version: UInt64)? {
        try checkName(object, "object")
        enum Outcome { case missing, tooSmall(UInt64), read(version: UInt64) }
        var capacity = max(sizeHint, 1)
        while true {
            let op = rados_create_read_op()
            defer { rados_release_read_op(op) }
            // librados fills these in when the operation completes: they need stable addresses.
            let size = UnsafeMutablePointer<UInt64>.allocate(capacity: 1)
            let length = UnsafeMutablePointer<Int>.allocate(capacity: 1)
            let results = UnsafeMutablePointer<Int32>.allocate(capacity: 2)
            defer { size.deallocate(); length.deallocate(); results.deallocate() }
            size.initialize(to: 0)
            length.initialize(to: 0)
            results.initialize(repeating: 0, count: 2)
            var outcome = Outcome.missing
            let bytes = try [UInt8](unsafeUninitializedCapacity: capacity) { buffer, count in
                count = 0
                rados_read_op_stat(op, size, nil, results)
                rados_read_op_read(op, 0, capacity, UnsafeMutableRawPointer(buffer.baseAddress!)
                    .assumingMemoryBound(to: CChar.self), length, results + 1)
                let completion = try RadosCompletion(context: "rados read \(object)")
                var rc = rados_aio_read_op_operate(op, io, completion.handle, object, 0)
                if rc == 0 { rc = completion.wait() }
                if rc == 0 { rc = results[0] < 0 ? results[0] : min(results[1], 0) }
                if rc == -ENOENT { return }
                guard rc >= 0 else { throw failure(rc, "read", object) }
                if size.pointee > UInt64(capacity) { outcome = .tooSmall(size.pointee); return }
                count = length.pointee
                outcome = .read(version: completion.version)
            }
            switch outcome {
            case .missing: return nil
            case .tooSmall(let size): capacity = Int(size)
            case .read(let version):
                // A copy rather than a mostly empty buffer kept alive with the bytes.
                return (bytes.count * 2 < bytes.capacity ? bytes.withUnsafeBufferPointer { Array($0) } : bytes, version)
            }
        }
    }

    /// The size of `object` in bytes (rados_stat), nil when there is no such object.
    public func size(_ object: String) throws -> UInt64? {
        try checkName(object, "object")
        var size: UInt64 = 0
        var mtime: time_t = 0
        let rc = rados_stat(io, object, &size, &mtime)
        if rc == -ENOENT { return nil }
        guard rc == 0 else { throw failure(rc, "stat", object) }
        return size
    }

    /// librados answers a read's length in an `int`.
    private func checkReadSize(_ count: Int) throws {
        guard count <= Int(Int32.max) else {
            throw StoreError.invalidArgument("rados reads at most \(Int32.max) bytes at once, not \(count)")
        }
    }

    // MARK: Writing

    /// Replaces the whole content of `object` with `bytes`, creating it if need be
    /// (rados_write_full). At most the OSDs' osd_max_write_size (90 MB by default) at once.
    public func writeFull<Bytes: ContiguousBytes>(_ object: String, _ bytes: Bytes) throws {
        try checkName(object, "object")
        let rc = bytes.withUnsafeBytes { rados_write_full(io, object, charPointer($0), $0.count) }
        guard rc == 0 else { throw failure(rc, "write", object) }
    }

    /// Writes `bytes` into `object` at `offset` (rados_write), creating the object if need be;
    /// a gap before `offset` reads as zeros.
    public func write<Bytes: ContiguousBytes>(_ object: String, _ bytes: Bytes, at offset: UInt64) throws {
        try checkName(object, "object")
        let rc = bytes.withUnsafeBytes { rados_write(io, object, charPointer($0), $0.count, offset) }
        guard rc == 0 else { throw failure(rc, "write", object) }
    }

    /// Creates `object` holding `bytes` if there is no object of that name, atomically (one
    /// write operation: exclusive create and write-full). Returns the new object's version
    /// (for ``replace(_:with:ifVersion:)``), nil when the object exists already (unchanged).
    @discardableResult
    public func createExclusive<Bytes: ContiguousBytes>(_ object: String, _ bytes: Bytes) throws -> UInt64? {
        try checkName(object, "object")
        return try bytes.withUnsafeBytes { buffer in
            let op = rados_create_write_op()
            defer { rados_release_write_op(op) }
            rados_write_op_create(op, Int32(LIBRADOS_CREATE_EXCLUSIVE), nil)
            rados_write_op_write_full(op, charPointer(buffer), buffer.count)
            let (rc, version) = try operate(op, object, "create")
            if rc == -EEXIST { return nil }
            guard rc == 0 else { throw failure(rc, "create", object) }
            return version
        }
    }

    /// Replaces the whole content of `object` with `bytes` if its version is still `version`
    /// (compare-and-set: one write operation asserting the version). Returns the new version,
    /// or nil, leaving the object as it is, when another writer changed it since (librados:
    /// ERANGE for a newer version, EOVERFLOW for an older one) or it no longer exists.
    /// Versions start at 1: version 0 is an invalid argument.
    public func replace<Bytes: ContiguousBytes>(_ object: String, with bytes: Bytes, ifVersion version: UInt64) throws -> UInt64? {
        try checkName(object, "object")
        guard version > 0 else {
            throw StoreError.invalidArgument("rados replace \(object): no object has version 0")
        }
        return try bytes.withUnsafeBytes { buffer in
            let op = rados_create_write_op()
            defer { rados_release_write_op(op) }
            rados_write_op_assert_version(op, version)
            rados_write_op_write_full(op, charPointer(buffer), buffer.count)
            let (rc, newVersion) = try operate(op, object, "replace")
            if rc == -ERANGE || rc == -EOVERFLOW || rc == -ENOENT { return nil }
            guard rc == 0 else { throw failure(rc, "replace", object) }
            return newVersion
        }
    }

    /// Runs a write operation and returns librados' result and the object's new version.
    private func operate(_ op: rados_write_op_t?, _ object: String, _ what: String) throws -> (Int32, UInt64) {
        let completion = try RadosCompletion(context: "rados \(what) \(object)")
        var rc = rados_aio_write_op_operate(op, io, completion.handle, object, nil, 0)
        if rc == 0 { rc = completion.wait() }
        return (rc, completion.version)
    }

    /// Deletes `object` (rados_remove); false when there was no such object.
    @discardableResult
    public func remove(_ object: String) throws -> Bool {
        try checkName(object, "object")
        let rc = rados_remove(io, object)
        if rc == -ENOENT { return false }
        guard rc == 0 else { throw failure(rc, "remove", object) }
        return true
    }

    /// Cuts `object` to `length` bytes, or extends it with zeros (rados_trunc). A missing
    /// object stays missing: the OSD creates none and reports no error.
    public func truncate(_ object: String, to length: UInt64) throws {
        try checkName(object, "object")
        let rc = rados_trunc(io, object, length)
        guard rc == 0 else { throw failure(rc, "truncate", object) }
    }

    // MARK: Listing

    /// The names of this namespace's objects that start with `prefix`, sorted. Lists the whole
    /// namespace (librados filters nothing by name): a cost proportional to its object count.
    public func objects(withPrefix prefix: String = "") throws -> [String] {
        var list: rados_list_ctx_t?
        var rc = rados_nobjects_list_open(io, &list)
        guard rc == 0, let list else { throw failure(rc, "list objects in", "pool \(name)") }
        defer { rados_nobjects_list_close(list) }
        var names: [String] = []
        while true {
            var entry: UnsafePointer<CChar>?
            rc = rados_nobjects_list_next(list, &entry, nil, nil)
            if rc == -ENOENT { break }
            guard rc == 0, let entry else { throw failure(rc, "list objects in", "pool \(name)") }
            let object = String(cString: entry)
            if object.hasPrefix(prefix) { names.append(object) }
        }
        return names.sorted()
    }

    // MARK: Extended attributes

    /// The value of `object`'s extended attribute `attribute` (rados_getxattr), nil when the
    /// object or the attribute does not exist.
    public func attribute(_ attribute: String, of object: String) throws -> [UInt8]? {
        try checkName(object, "object")
        try checkName(attribute, "attribute")
        var capacity = 4096
        while true {
            var missing = false
            var tooSmall = false
            let value = try [UInt8](unsafeUninitializedCapacity: capacity) { buffer, count in
                count = 0
                let rc = rados_getxattr(io, object, attribute, UnsafeMutableRawPointer(buffer.baseAddress!)
                    .assumingMemoryBound(to: CChar.self), capacity)
                if rc == -ENOENT || rc == -ENODATA { missing = true; return }
                if rc == -ERANGE { tooSmall = true; return }
                guard rc >= 0 else { throw failure(rc, "get attribute \(attribute) of", object) }
                count = Int(rc)
            }
            if missing { return nil }
            if tooSmall { capacity *= 16; continue }
            return value
        }
    }

    /// Sets `object`'s extended attribute `attribute` to `value` (rados_setxattr), creating an
    /// empty object first when there is none.
    public func setAttribute<Bytes: ContiguousBytes>(_ attribute: String, of object: String, to value: Bytes) throws {
        try checkName(object, "object")
        try checkName(attribute, "attribute")
        let rc = value.withUnsafeBytes { rados_setxattr(io, object, attribute, charPointer($0), $0.count) }
        guard rc == 0 else { throw failure(rc, "set attribute \(attribute) of", object) }
    }

    /// Removes `object`'s extended attribute `attribute` (rados_rmxattr). Nothing to remove is
    /// no error: the OSD answers success for a missing attribute, so a Bool would tell nothing.
    public func removeAttribute(_ attribute: String, of object: String) throws {
        try checkName(object, "object")
        try checkName(attribute, "attribute")
        let rc = rados_rmxattr(io, object, attribute)
        guard rc == 0 || rc == -ENOENT || rc == -ENODATA else {
            throw failure(rc, "remove attribute \(attribute) of", object)
        }
    }

    // MARK: Many requests in flight

    /// A batch of asynchronous writes to this pool: each is sent as it is added; the batch's
    /// ``RadosWriteBatch/wait()`` waits for all of them.
    public func writeBatch() -> RadosWriteBatch { RadosWriteBatch(pool: self) }

    /// One read of ``readMany(_:)``: up to `buffer.count` bytes of `object` from `offset`.
    public struct ReadRequest {
        /// The object to read.
        public var object: String
        /// Where in the object to start.
        public var offset: UInt64
        /// Where the bytes go; it must stay valid until `readMany` returns.
        public var buffer: UnsafeMutableRawBufferPointer
        /// A read of `buffer.count` bytes of `object` from `offset`.
        public init(object: String, offset: UInt64, buffer: UnsafeMutableRawBufferPointer) {
            self.object = object
            self.offset = offset
            self.buffer = buffer
        }
    }

    /// Sends all `requests` at once (rados_aio_read) and waits for every one; returns, in
    /// order, the bytes each read (as ``read(_:at:into:)``), nil for a missing object.
    /// Requests are independent: two may read the same object.
    /// Throws the first failure, once no read is in flight any more.
    public func readMany(_ requests: [ReadRequest]) throws -> [Int?] {
        var results = [Int?](repeating: nil, count: requests.count)
        var pending: [(index: Int, completion: RadosCompletion)] = []
        var firstError: Error?
        for (index, request) in requests.enumerated() {
            do {
                try checkName(request.object, "object")
                if request.buffer.count == 0 {
                    results[index] = try size(request.object) == nil ? nil : 0
                    continue
                }
                try checkReadSize(request.buffer.count)
                let completion = try RadosCompletion(context: "rados read \(request.object)")
                let rc = rados_aio_read(io, request.object, completion.handle,
                                        request.buffer.baseAddress!.assumingMemoryBound(to: CChar.self),
                                        request.buffer.count, request.offset)
                guard rc == 0 else { throw failure(rc, "read", request.object) }
                pending.append((index, completion))
            } catch {
                firstError = firstError ?? error
                break
            }
        }
        for (index, completion) in pending {
            let rc = completion.wait()
            if rc == -ENOENT { continue }
            if rc < 0 {
                firstError = firstError ?? failure(rc, "read", requests[index].object)
            } else {
                results[index] = Int(rc)
            }
        }
        if let firstError { throw firstError }
        return results
    }
}

/// A byte buffer as librados' `const char *`.
/// (An empty buffer may have no address: librados gets a valid one all the same.)
@inline(__always)
func charPointer(_ buffer: UnsafeRawBufferPointer) -> UnsafePointer<CChar> {
    buffer.baseAddress?.assumingMemoryBound(to: CChar.self) ?? emptyBytes
}

private let emptyBytes = UnsafePointer(UnsafeMutablePointer<CChar>.allocate(capacity: 1))
