/// Where a store's objects live: a local directory (``DirectoryBackend``) or a Ceph RADOS
/// pool (module VDiskRados). The store above sees only these objects:
///
/// - **config**: written once by `init` (format version, store id);
/// - **packs**: append-only byte objects named by number, read at any offset;
/// - **pack summaries** (shared backends): a pack's record list, written when it is sealed,
///   so that another host's index can take the pack in without reading it whole;
/// - **root**: one small object replaced atomically, by compare-and-set on a shared backend;
/// - **locks**: who may write.
///
/// Implementations are thread-safe. Nothing above this protocol knows a backend's types.
public protocol StoreBackend: AnyObject, Sendable {
    /// How the store is named in messages and in /proc/mounts (`/srv/vms`, `rados://pool/ns`).
    var name: String { get }
    /// True when several hosts may write the store at once: pack numbers are then claimed by
    /// exclusive create, roots are committed by compare-and-set, and records of an
    /// uncommitted write are left in place rather than cut (another host may have indexed them).
    var isShared: Bool { get }
    /// This host's directory for what it derives from the store: the chunk index, the
    /// journal and control socket of a mount. For a directory store, the store itself.
    var localDirectory: String { get }

    /// The config object's bytes. Throws `storeMissing` or `notAStore` when there is none.
    func readConfig() throws -> [UInt8]
    /// Checks that a store can be created here (nothing there yet) and makes room for it.
    func prepareCreate() throws
    /// Writes the config object last at `init`: from then on the location is a store.
    func writeConfig(_ bytes: [UInt8]) throws

    /// Numbers of every pack, ascending.
    func packNumbers() throws -> [UInt64]
    /// A pack's length in bytes, nil when there is no such pack.
    func packSize(_ pack: UInt64) throws -> Int64?
    /// Creates pack `pack` holding `header`; nil when the number is taken (a shared store's
    /// other host got there first: try the next).
    func createPack(_ pack: UInt64, header: [UInt8]) throws -> PackOutput?
    /// Reads up to `buffer.count` bytes of `pack` from `offset`; nil when there is no such pack.
    func readPack(_ pack: UInt64, at offset: Int64, into buffer: UnsafeMutableRawBufferPointer) throws -> Int?
    /// Reads several ranges at once (a remote backend keeps them all in flight); each result
    /// as ``readPack(_:at:into:)``'s.
    func readPacks(_ requests: [PackRead]) throws -> [Int?]
    /// Deletes packs (garbage collection, after the index and root moved away from them).
    func removePacks(_ packs: [UInt64]) throws
    /// Cuts a pack back to `length` bytes (0: deletes it). Directory stores only: rollback.
    func truncatePack(_ pack: UInt64, to length: Int64) throws

    /// Stores a sealed pack's summary (its record list). No-op where scanning packs is cheap.
    func writePackSummary(_ pack: UInt64, _ bytes: [UInt8]) throws
    /// A pack's summary, nil when it has none (not sealed, or a directory store).
    func readPackSummary(_ pack: UInt64) throws -> [UInt8]?
    func removePackSummaries(_ packs: [UInt64]) throws

    /// The root object and its version, nil when there is none.
    func readRoot() throws -> (bytes: [UInt8], version: UInt64)?
    /// Replaces the root if it is still at `version` (nil: there must be none yet); returns the
    /// new version, or nil when another writer replaced it first.
    func replaceRoot(_ bytes: [UInt8], ifVersion version: UInt64?) throws -> UInt64?

    /// Takes this process's lock on the store; released when the returned lock is closed
    /// or deallocated. Throws `storeLocked` naming the holder when it cannot be had.
    func lock(_ mode: StoreLockMode, purpose: String) throws -> StoreLock

    /// Bytes the store occupies and the space left where it lives, for statfs.
    func space() throws -> (totalBytes: UInt64, freeBytes: UInt64, availableBytes: UInt64)

    /// Forgets cached handles after packs were deleted or replaced.
    func forgetOpenPacks()

    /// Shared stores: notes that the journal `id` (a host's mount) holds acknowledged writes
    /// not yet in the store (`pending`), or no longer does. Garbage collection waits for them.
    func noteJournal(_ id: String, pending: Bool) throws
    /// The journals of other hosts that hold writes not yet in the store.
    func pendingJournals() throws -> [String]
    /// Shared stores: appends packs garbage collection deleted to the store's record of them,
    /// so that every host's index drops its entries for them.
    func recordCollectedPacks(_ packs: [UInt64]) throws
    /// Every pack garbage collection deleted, in order.
    func collectedPacks() throws -> [UInt64]
    /// Shared stores, from gc (which holds the exclusive store lock, so no writer holds a
    /// lease): removes the objects leases left behind (a lock leaves its object in place).
    func removeLeaseObjects() throws

    /// Takes the write lease of image `name` for this process: one writer per image across
    /// every host of a shared store. Throws `leaseHeld` naming the holder. A directory
    /// store's lock already makes its one writer the only one: its leases are free.
    func acquireLease(image name: String, purpose: String) throws -> ImageLease
    /// The leases held now (shared stores), by image name.
    func leases() throws -> [LeaseInfo]
    /// Breaks the lease of image `name` (a crashed host's, before it expires); false when none was held.
    func breakLease(image name: String) throws -> Bool
}

/// A held image lease; renewed in the background until released.
public protocol ImageLease: AnyObject, Sendable {
    /// False once the lease was lost (not renewed in time, or broken by an operator):
    /// the holder must not commit that image any more.
    var isHeld: Bool { get }
    /// Renews the lease now and says whether it is still held (false: it lapsed or was
    /// broken, and is lost for good). Called before each commit that depends on it.
    func confirm() throws -> Bool
    func release()
}

/// Who holds an image's lease.
public struct LeaseInfo: Sendable, Codable, Equatable {
    public var image: String
    /// The holder as it described itself: host, process, purpose, since when.
    public var holder: String
    public init(image: String, holder: String) { self.image = image; self.holder = holder }
}

/// The lease of a store with a single writer: always held, nothing to renew.
public final class SingleWriterLease: ImageLease, @unchecked Sendable {
    public init() {}
    public var isHeld: Bool { true }
    public func confirm() throws -> Bool { true }
    public func release() {}
}

/// One range of a pack to read into `buffer`.
public struct PackRead {
    public var pack: UInt64
    public var offset: Int64
    public var buffer: UnsafeMutableRawBufferPointer
    public init(pack: UInt64, offset: Int64, buffer: UnsafeMutableRawBufferPointer) {
        self.pack = pack; self.offset = offset; self.buffer = buffer
    }
}

extension StoreBackend {
    /// One read after another: right for a local disk, where the caller's threads give the
    /// parallelism.
    public func readPacks(_ requests: [PackRead]) throws -> [Int?] {
        try requests.map { try readPack($0.pack, at: $0.offset, into: $0.buffer) }
    }
}

/// The kinds of store lock.
public enum StoreLockMode: Sendable {
    /// Reading only; other readers and writers may be there.
    case read
    /// This process writes. On a directory store no one else may write; on a shared store
    /// other hosts may (images are guarded by leases), but not a second process of this
    /// host on the same local directory, and not a maintenance job.
    case write
    /// No other writer anywhere (garbage collection on a shared store, index rebuilds).
    case exclusive
}

/// A held store lock.
public protocol StoreLock: AnyObject, Sendable {
    func release()
}

/// Appends to one pack being written.
public protocol PackOutput: AnyObject {
    /// Writes `bytes` at `offset` (always the pack's current end). May return before the
    /// bytes are durable; ``synchronize()`` waits for them.
    func write(_ bytes: UnsafeRawBufferPointer, at offset: Int64) throws
    /// Every byte written so far is durable when this returns.
    func synchronize() throws
    /// Lets go of the pack (after a synchronize, or to abandon it).
    func close()
}

/// Opens store locations that are not local directories (`rados://…`): modules providing a
/// backend register their scheme here, and ``Store/open(at:access:purpose:)`` consults it.
public enum StoreBackends {
    /// Makes a backend for a location, given the local state directory chosen by the user (nil: default).
    public typealias Opener = @Sendable (_ location: String, _ localDirectory: String?) throws -> StoreBackend
    private static let openers = Locked<[String: Opener]>([:])

    /// Registers `opener` for locations starting `scheme://`.
    public static func register(scheme: String, _ opener: @escaping Opener) {
        openers.withLock { $0[scheme] = opener }
    }

    /// The backend for `location`: a registered scheme, else a local directory.
    public static func backend(for location: String, localDirectory: String? = nil) throws -> StoreBackend {
        if let r = location.range(of: "://") {
            let scheme = String(location[..<r.lowerBound])
            guard let opener = openers.withLock({ $0[scheme] }) else {
                throw StoreError.invalidArgument("unknown store location scheme '\(scheme)://' (stores are directories or rados://POOL[/NAMESPACE])")
            }
            return try opener(location, localDirectory)
        }
        return DirectoryBackend(path: location)
    }
}
