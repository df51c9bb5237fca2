import Foundation
import Glibc
import VDiskStore

/// A store in a Ceph RADOS pool, shared by any number of hosts (see vdiskfs-format(5)).
///
/// Objects, in the location's pool and namespace:
///
///     vdiskfs.json       format version and store id (created exclusively at init)
///     root               the committed root; replaced by compare-and-set on its version
///     packs/NNNNNNNN     packs of records, ~32 MiB; a number is claimed by exclusive create
///     summaries/NNN…     a sealed pack's record list, for other hosts' indexes
///     lock               cls_lock "store": shared by writers, exclusive for gc
///     leases/IMAGE       cls_lock "lease": the one writer of an image, with an expiry
///
/// Each host keeps its own index (and a mount's journal) in a local directory. Writes are
/// asynchronous (many in flight per pack); a pack's bytes are acknowledged by the OSDs
/// before its summary is written and before any root names them.
public final class RadosBackend: StoreBackend, @unchecked Sendable {
    /// A parsed `rados://POOL[/NAMESPACE][?conf=FILE&id=USER&lease=SECONDS]` location.
    public struct Location: Sendable, Equatable {
        public var pool: String
        public var namespace: String
        public var configFile: String?
        public var user: String?
        /// Seconds a lease (and the writers' store lock) lasts unless renewed; a crashed
        /// host's lease frees itself after this.
        public var leaseSeconds: Double = 30

        /// Parses a location; throws `invalidArgument` with what is wrong.
        public init(_ text: String) throws {
            guard text.hasPrefix("rados://") else { throw StoreError.invalidArgument("\(text) is not a rados:// location") }
            var rest = Substring(text.dropFirst("rados://".count))
            var query = Substring("")
            if let q = rest.firstIndex(of: "?") {
                query = rest[rest.index(after: q)...]
                rest = rest[..<q]
            }
            let parts = rest.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
            guard let p = parts.first, !p.isEmpty else {
                throw StoreError.invalidArgument("\(text): a rados location names a pool: rados://POOL[/NAMESPACE]")
            }
            pool = String(p)
            namespace = parts.count > 1 ? String(parts[1]) : ""
            for item in query.split(separator: "&") {
                let kv = item.split(separator: "=", maxSplits: 1)
                let key = String(kv[0]), value = kv.count > 1 ? String(kv[1]) : ""
                switch key {
                case "conf": configFile = value
                case "id", "user": user = value
                case "lease":
                    guard let s = Double(value), s >= 1, s <= 3600 else {
                        throw StoreError.invalidArgument("\(text): lease must be a number of seconds from 1 to 3600")
                    }
                    leaseSeconds = s
                default: throw StoreError.invalidArgument("\(text): unknown option '\(key)' (known: conf, id, lease)")
                }
            }
        }

        /// The location as written, without its options.
        public var name: String { "rados://" + pool + (namespace.isEmpty ? "" : "/" + namespace) }

        /// Where this host keeps its state of the store unless told otherwise.
        public var defaultLocalDirectory: String {
            let base = getenv("VDISKFS_STATE_DIR").map { String(cString: $0) } ?? "/var/lib/vdiskfs"
            return base + "/rados/" + pool + (namespace.isEmpty ? "" : "/" + namespace)
        }
    }

    public let location: Location
    public var name: String { location.name }
    public var isShared: Bool { true }
    public let localDirectory: String
    let cluster: RadosCluster
    let pool: RadosPool
    let keeper: LockKeeper

    static let storeLockName = "store"
    static let leaseLockName = "lease"

    /// Registers the `rados://` scheme with ``StoreBackends``.
    public static func register() {
        StoreBackends.register(scheme: "rados") { location, localDirectory in
            try RadosBackend(location: Location(location), localDirectory: localDirectory)
        }
    }

    /// Connects to the location's cluster and opens its pool.
    public init(location: Location, localDirectory: String? = nil) throws {
        self.location = location
        self.localDirectory = localDirectory ?? location.defaultLocalDirectory
        cluster = try RadosCluster(configFile: location.configFile, user: location.user)
        pool = try cluster.pool(location.pool, namespace: location.namespace)
        keeper = LockKeeper(pool: pool, seconds: location.leaseSeconds)
    }

    deinit { keeper.stop() }

    static func packObject(_ pack: UInt64) -> String { "packs/" + String(format: "%08llx", pack) }
    static func summaryObject(_ pack: UInt64) -> String { "summaries/" + String(format: "%08llx", pack) }
    static func leaseObject(_ image: String) -> String { "leases/" + image }

    private func makeLocalDirectory() throws {
        do { try FileManager.default.createDirectory(atPath: localDirectory, withIntermediateDirectories: true) }
        catch { throw StoreError.outputUnwritable(path: localDirectory, reason: "cannot create this host's state directory for the store") }
    }

    // MARK: config

    public func readConfig() throws -> [UInt8] {
        guard let (bytes, _) = try pool.readAll(Store.configName) else {
            throw StoreError.notAStore(path: name)
        }
        return bytes
    }

    public func prepareCreate() throws {
        if try pool.size(Store.configName) != nil || pool.size("root") != nil { throw StoreError.nameExists(name: name) }
        try makeLocalDirectory()
    }

    public func writeConfig(_ bytes: [UInt8]) throws {
        guard try pool.createExclusive(Store.configName, bytes) != nil else { throw StoreError.nameExists(name: name) }
    }

    // MARK: packs

    public func packNumbers() throws -> [UInt64] {
        try pool.objects(withPrefix: "packs/").compactMap { UInt64($0.dropFirst("packs/".count), radix: 16) }.sorted()
    }

    public func packSize(_ pack: UInt64) throws -> Int64? {
        try pool.size(Self.packObject(pack)).map { Int64($0) }
    }

    public func createPack(_ pack: UInt64, header: [UInt8]) throws -> PackOutput? {
        let object = Self.packObject(pack)
        guard try pool.createExclusive(object, header) != nil else { return nil }
        return RadosPackOutput(pool: pool, object: object)
    }

    /// A pack being appended to: every write is in flight at once; synchronize waits.
    final class RadosPackOutput: PackOutput {
        let pool: RadosPool
        let object: String
        var batch: RadosWriteBatch
        init(pool: RadosPool, object: String) {
            self.pool = pool
            self.object = object
            batch = pool.writeBatch()
        }
        func write(_ bytes: UnsafeRawBufferPointer, at offset: Int64) throws {
            batch.write(object, bytes, at: UInt64(offset))
        }
        func synchronize() throws {
            try batch.wait()
        }
        func close() { try? batch.wait() }
    }

    public func readPack(_ pack: UInt64, at offset: Int64, into buffer: UnsafeMutableRawBufferPointer) throws -> Int? {
        try pool.read(Self.packObject(pack), at: UInt64(offset), into: buffer)
    }

    public func readPacks(_ requests: [PackRead]) throws -> [Int?] {
        try pool.readMany(requests.map { RadosPool.ReadRequest(object: Self.packObject($0.pack), offset: UInt64($0.offset), buffer: $0.buffer) })
    }

    public func removePacks(_ packs: [UInt64]) throws {
        for p in packs { try pool.remove(Self.packObject(p)) }
    }

    public func truncatePack(_ pack: UInt64, to length: Int64) throws {
        if length == 0 { try pool.remove(Self.packObject(pack)) } else { try pool.truncate(Self.packObject(pack), to: UInt64(length)) }
    }

    public func writePackSummary(_ pack: UInt64, _ bytes: [UInt8]) throws {
        try pool.writeFull(Self.summaryObject(pack), bytes)
    }

    public func readPackSummary(_ pack: UInt64) throws -> [UInt8]? {
        try pool.readAll(Self.summaryObject(pack)).map(\.bytes)
    }

    public func removePackSummaries(_ packs: [UInt64]) throws {
        for p in packs { try pool.remove(Self.summaryObject(p)) }
    }

    public func forgetOpenPacks() {}

    // MARK: root

    public func readRoot() throws -> (bytes: [UInt8], version: UInt64)? {
        try pool.readAll("root")
    }

    public func replaceRoot(_ bytes: [UInt8], ifVersion version: UInt64?) throws -> UInt64? {
        guard let version else { return try pool.createExclusive("root", bytes) }
        return try pool.replace("root", with: bytes, ifVersion: version)
    }

    // MARK: locks and leases

    /// How this process names itself to other hosts: host, pid, purpose, start time.
    func holderName(_ purpose: String) -> String {
        var host = [CChar](repeating: 0, count: 256)
        gethostname(&host, host.count - 1)
        let stamp = ISO8601DateFormatter().string(from: Date())
        return "host \(String(cString: host)) pid \(getpid()) (vdiskfs \(purpose)) since \(stamp) #\(UInt32.random(in: 0...UInt32.max))"
    }

    /// The readable part of a holder's cookie (without its uniquifier).
    static func describeHolder(_ cookie: String) -> String {
        if let hash = cookie.range(of: " #", options: .backwards) { return String(cookie[..<hash.lowerBound]) }
        return cookie
    }

    public func lock(_ mode: StoreLockMode, purpose: String) throws -> StoreLock {
        guard mode != .read else { return NoLock() }
        // One writing process per host directory (its index is not shared between processes).
        try makeLocalDirectory()
        let local = try DirectoryBackend(path: localDirectory).lock(.write, purpose: purpose)
        let cookie = holderName(purpose)
        let held: Bool
        if mode == .write {
            held = try pool.lockShared("lock", name: Self.storeLockName, cookie: cookie, tag: "writers",
                                       description: cookie, duration: location.leaseSeconds)
        } else {
            func take() throws -> Bool {
                try pool.lockExclusive("lock", name: Self.storeLockName, cookie: cookie, description: cookie, duration: location.leaseSeconds)
            }
            held = try take() || (breakDeadLocalHolds("lock", lock: Self.storeLockName) && take())
        }
        guard held else {
            local.release()
            let holders = (try? pool.lockers("lock", name: Self.storeLockName).holders) ?? []
            let who = holders.map { Self.describeHolder($0.cookie) }.joined(separator: "; ")
            throw StoreError.storeLocked(path: name, holder: who.isEmpty ? "another host" : who)
        }
        let hold = LockKeeper.Hold(object: "lock", name: Self.storeLockName, cookie: cookie,
                                   tag: mode == .write ? "writers" : nil)
        keeper.keep(hold)
        return RadosStoreLock(keeper: keeper, hold: hold, local: local)
    }

    final class NoLock: StoreLock, @unchecked Sendable { func release() {} }

    final class RadosStoreLock: StoreLock, @unchecked Sendable {
        let keeper: LockKeeper
        let hold: LockKeeper.Hold
        let local: StoreLock
        init(keeper: LockKeeper, hold: LockKeeper.Hold, local: StoreLock) { self.keeper = keeper; self.hold = hold; self.local = local }
        deinit { release() }
        func release() {
            keeper.release(hold)
            local.release()
        }
    }

    /// Breaks the holds of `lock` on `object` whose holder was a process of this host that is
    /// gone (a kill -9'd mount): its lease would otherwise block this host until it expires.
    /// Returns whether any was broken.
    func breakDeadLocalHolds(_ object: String, lock: String) -> Bool {
        var host = [CChar](repeating: 0, count: 256)
        gethostname(&host, host.count - 1)
        let prefix = "host \(String(cString: host)) pid "
        var broke = false
        for h in (try? pool.lockers(object, name: lock).holders) ?? [] where h.cookie.hasPrefix(prefix) {
            let pid = Int32(h.cookie.dropFirst(prefix.count).prefix { $0.isNumber }) ?? 0
            guard pid > 0, pid != getpid(), Self.processIsGone(pid) else { continue }
            if (try? pool.breakLock(object, name: lock, client: h.client, cookie: h.cookie)) == true {
                log("vdiskfs: broke the lock on \(object) of a dead process of this host (\(Self.describeHolder(h.cookie)))")
                broke = true
            }
        }
        return broke
    }

    /// Whether process `pid` of this host has ended: no such process, or a zombie (killed,
    /// not yet reaped by its parent).
    static func processIsGone(_ pid: Int32) -> Bool {
        if kill(pid, 0) != 0 && errno == ESRCH { return true }
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.range(of: ") ", options: .backwards) else { return false }
        return stat[close.upperBound...].hasPrefix("Z") || stat[close.upperBound...].hasPrefix("X")
    }

    public func acquireLease(image: String, purpose: String) throws -> ImageLease {
        let cookie = holderName(purpose)
        let object = Self.leaseObject(image)
        func take() throws -> Bool {
            try pool.lockExclusive(object, name: Self.leaseLockName, cookie: cookie, description: cookie, duration: location.leaseSeconds)
        }
        guard try take() || (breakDeadLocalHolds(object, lock: Self.leaseLockName) && take()) else {
            let holders = (try? pool.lockers(object, name: Self.leaseLockName).holders) ?? []
            throw StoreError.leaseHeld(image: image, holder: holders.first.map { Self.describeHolder($0.cookie) } ?? "another host")
        }
        let hold = LockKeeper.Hold(object: object, name: Self.leaseLockName, cookie: cookie, tag: nil)
        keeper.keep(hold)
        return RadosLease(keeper: keeper, hold: hold)
    }

    final class RadosLease: ImageLease, @unchecked Sendable {
        let keeper: LockKeeper
        let hold: LockKeeper.Hold
        init(keeper: LockKeeper, hold: LockKeeper.Hold) { self.keeper = keeper; self.hold = hold }
        deinit { release() }
        var isHeld: Bool { keeper.isHeld(hold) }
        func confirm() throws -> Bool { try keeper.renew(hold) }
        func release() { keeper.release(hold) }
    }

    public func leases() throws -> [LeaseInfo] {
        var out: [LeaseInfo] = []
        for object in try pool.objects(withPrefix: "leases/").sorted() {
            let holders = try pool.lockers(object, name: Self.leaseLockName).holders
            for h in holders {
                out.append(LeaseInfo(image: String(object.dropFirst("leases/".count)), holder: Self.describeHolder(h.cookie)))
            }
        }
        return out
    }

    public func breakLease(image: String) throws -> Bool {
        let object = Self.leaseObject(image)
        var broke = false
        for h in try pool.lockers(object, name: Self.leaseLockName).holders {
            if try pool.breakLock(object, name: Self.leaseLockName, client: h.client, cookie: h.cookie) { broke = true }
        }
        return broke
    }

    // MARK: journals and collected packs

    public func noteJournal(_ id: String, pending: Bool) throws {
        let object = "journals/" + id
        if pending { try pool.writeFull(object, Array(holderName("mount").utf8)) } else { try pool.remove(object) }
    }

    public func pendingJournals() throws -> [String] {
        try pool.objects(withPrefix: "journals/").map { String($0.dropFirst("journals/".count)) }.sorted()
    }

    /// `collected`: 8-byte little-endian pack numbers, appended by gc (which holds the
    /// exclusive store lock, so there is one writer).
    public func recordCollectedPacks(_ packs: [UInt64]) throws {
        guard !packs.isEmpty else { return }
        var bytes = try pool.readAll("collected")?.bytes ?? []
        for p in packs { withUnsafeBytes(of: p.littleEndian) { bytes.append(contentsOf: $0) } }
        try pool.writeFull("collected", bytes)
    }

    public func collectedPacks() throws -> [UInt64] {
        guard let bytes = try pool.readAll("collected")?.bytes else { return [] }
        return stride(from: 0, to: bytes.count - bytes.count % 8, by: 8).map { i in
            bytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: i, as: UInt64.self)) }
        }
    }

    public func removeLeaseObjects() throws {
        for object in try pool.objects(withPrefix: "leases/") {
            // Only objects nobody holds (an expired hold is not listed).
            if try pool.lockers(object, name: Self.leaseLockName).holders.isEmpty { try pool.remove(object) }
        }
    }

    // MARK: space

    public func space() throws -> (totalBytes: UInt64, freeBytes: UInt64, availableBytes: UInt64) {
        let u = try cluster.usage()
        // A cluster without a manager daemon reports no figures: say "plenty" rather than "full".
        if u.totalBytes == 0 { return (1 << 50, 1 << 50, 1 << 50) }
        return (u.totalBytes, u.availableBytes, u.availableBytes)
    }
}
