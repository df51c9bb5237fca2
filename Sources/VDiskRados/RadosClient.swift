import CRados
import Foundation
import VDiskStore

/// A connection to a Ceph cluster through librados (`rados_t`). Thread-safe; open pools with
/// ``pool(_:namespace:)``. Disconnects (rados_shutdown) when the last reference, including
/// those the cluster's pools hold, goes away.
public final class RadosCluster: @unchecked Sendable {
    private let handle: rados_t
    /// The configuration file the connection was made with, for messages ("the default
    /// ceph.conf" when librados searched for it).
    public let configDescription: String
    /// The client the cluster knows this connection as, e.g. `client.admin`.
    public let user: String

    /// Connects to the cluster that `configFile` describes as `user`.
    ///
    /// - Parameters:
    ///   - configFile: a ceph.conf; nil: `$CEPH_CONF`, else librados' default search
    ///     (/etc/ceph/ceph.conf, ~/.ceph/config, ./ceph.conf). `$CEPH_ARGS` is honoured too.
    ///   - user: the client name, with or without its `client.` prefix; nil: `client.admin`.
    ///   - connectTimeout: whole seconds (librados takes no fractions) to reach and authenticate with the monitors
    ///     (client_mount_timeout); an unreachable cluster fails after this, not 5 minutes.
    ///   - operationTimeout: seconds after which a monitor or OSD operation fails with
    ///     ETIMEDOUT (rados_mon_op_timeout, rados_osd_op_timeout) instead of waiting forever
    ///     for a down OSD; 0: wait forever. Values given here override the configuration file.
    /// - Throws: `StoreError.io` naming the configuration file: ENOENT when it does not
    ///   exist, ETIMEDOUT when no monitor answered, or whatever else librados reported.
    public init(configFile: String? = nil, user: String? = nil,
                connectTimeout: Int = 10, operationTimeout: Int = 30) throws {
        let file = configFile ?? ProcessInfo.processInfo.environment["CEPH_CONF"]
        let user = user.map { $0.hasPrefix("client.") ? $0 : "client." + $0 } ?? "client.admin"
        let described = file ?? "the default ceph.conf"
        try checkName(user, "user")
        if let file { try checkName(file, "configuration file") }

        var created: rados_t?
        var rc = rados_create2(&created, "ceph", user, 0)
        guard rc == 0, let handle = created else {
            throw StoreError.rados(rc, "rados create a handle for \(user)")
        }
        func fail(_ rc: Int32, _ context: String) -> StoreError {
            rados_shutdown(handle)
            return StoreError.rados(rc, context)
        }
        rc = rados_conf_read_file(handle, file)
        guard rc == 0 else { throw fail(rc, "rados read configuration \(described)") }
        rc = rados_conf_parse_env(handle, nil)
        guard rc == 0 else { throw fail(rc, "rados parse $CEPH_ARGS") }
        for (option, seconds) in [("client_mount_timeout", connectTimeout),
                                  ("rados_mon_op_timeout", operationTimeout),
                                  ("rados_osd_op_timeout", operationTimeout)] {
            rc = rados_conf_set(handle, option, String(max(seconds, 0)))
            guard rc == 0 else { throw fail(rc, "rados set \(option) = \(seconds)") }
        }
        rc = rados_connect(handle)
        guard rc == 0 else {
            throw fail(rc, "rados connect as \(user) to the cluster of \(described)")
        }
        self.handle = handle
        self.configDescription = described
        self.user = user
    }

    deinit { rados_shutdown(handle) }

    /// Opens `name` (rados_ioctx_create), in `namespace` (nil or "": the default namespace).
    /// - Throws: `StoreError.storeMissing(path: "rados://<name>")` when there is no such pool.
    public func pool(_ name: String, namespace: String? = nil) throws -> RadosPool {
        try RadosPool(cluster: self, name: name, namespace: namespace ?? "")
    }

    /// Opens an io context on pool `name`; ENOENT when there is none.
    func openIOContext(_ name: String) -> (rados_ioctx_t?, Int32) {
        var io: rados_ioctx_t?
        let rc = rados_ioctx_create(handle, name, &io)
        return (io, rc)
    }

    /// Creates pool `name` with the cluster's default settings (rados_pool_create); false
    /// when it exists already. For tests and tools: production pools are made by their admin.
    @discardableResult
    public func createPool(_ name: String) throws -> Bool {
        try checkName(name, "pool")
        let rc = rados_pool_create(handle, name)
        if rc == -EEXIST { return false }
        guard rc == 0 else { throw StoreError.rados(rc, "rados create pool \(name)", pool: name) }
        return true
    }

    /// Deletes pool `name` and everything in it (rados_pool_delete; the monitors must allow
    /// it: mon_allow_pool_delete); false when there was no such pool. For tests.
    @discardableResult
    public func deletePool(_ name: String) throws -> Bool {
        try checkName(name, "pool")
        let rc = rados_pool_delete(handle, name)
        if rc == -ENOENT { return false }
        guard rc == 0 else { throw StoreError.rados(rc, "rados delete pool \(name)") }
        return true
    }

    /// This connection's id in the cluster (rados_get_instance_id): a lock holder is
    /// listed as `client.<instanceID>` (see ``RadosPool/lockers(_:name:)``).
    public var instanceID: UInt64 { rados_get_instance_id(handle) }

    /// The cluster's raw capacity and use (rados_cluster_stat), in bytes. The monitors get
    /// these figures from the manager daemon: a cluster without ceph-mgr reports zeros.
    public func usage() throws -> (totalBytes: UInt64, usedBytes: UInt64, availableBytes: UInt64, objects: UInt64) {
        var stat = rados_cluster_stat_t()
        let rc = rados_cluster_stat(handle, &stat)
        guard rc == 0 else { throw StoreError.rados(rc, "rados cluster usage") }
        return (stat.kb * 1024, stat.kb_used * 1024, stat.kb_avail * 1024, stat.num_objects)
    }
}

extension StoreError {
    /// The error for librados' result `rc` (-errno) while doing `context`: ENOSPC and EDQUOT
    /// (a full cluster or a pool over its quota) are `diskFull` of `pool`; everything else `io`.
    static func rados(_ rc: Int32, _ context: String, pool: String? = nil) -> StoreError {
        let error = rc < 0 ? -rc : (rc == 0 ? EIO : rc)
        if let pool, error == ENOSPC || error == EDQUOT { return .diskFull(path: "rados pool \(pool)") }
        return .io(errno: error, context: context)
    }
}

/// librados takes names as C strings: one with a NUL byte in it would be silently cut short.
func checkName(_ name: String, _ what: String) throws {
    if name.utf8.contains(0) {
        throw StoreError.invalidArgument("rados \(what) name contains a NUL byte: \(name.debugDescription)")
    }
}
