/// Who holds a lock on an object (``RadosPool/lockers(_:name:)``).
public struct RadosLockers: Sendable, Equatable {
    /// One holder of the lock.
    public struct Holder: Sendable, Equatable {
        /// The holder's connection, `client.<instance id>` (``RadosCluster/instanceID``).
        public var client: String
        /// The cookie it took the lock with.
        public var cookie: String
        /// Its network address, e.g. `v1:127.0.0.1:0/2951668900`.
        public var address: String
    }

    /// True for an exclusive lock, false for a shared one (and when nobody holds the lock).
    public var exclusive: Bool
    /// The tag of a shared lock ("" for an exclusive one).
    public var tag: String
    /// The current holders; empty when the lock is free (expired holds are not listed).
    public var holders: [Holder]
}
