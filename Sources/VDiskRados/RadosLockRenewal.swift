import CRados

/// What a lock request does when its (client, cookie) pair holds the lock already: the
/// cls_lock flags of `rados_lock_exclusive` / `rados_lock_shared`.
public enum RadosLockRenewal: Sendable {
    /// Takes the lock; a pair that holds it already gets false (librados: EEXIST).
    case acquire
    /// Takes the lock, or restarts the pair's hold on it with the new duration
    /// (LIBRADOS_LOCK_FLAG_MAY_RENEW). After an expiry this silently takes the lock anew.
    case acquireOrRenew
    /// Only restarts a hold the pair still has (LIBRADOS_LOCK_FLAG_MUST_RENEW): false when
    /// the hold expired or was broken, even if nobody has taken the lock since. What a lease
    /// holder uses: a hold that lapsed may have been someone else's in between.
    case renewOnly

    var flags: UInt8 {
        switch self {
        case .acquire: return 0
        case .acquireOrRenew: return UInt8(LIBRADOS_LOCK_FLAG_MAY_RENEW)
        case .renewOnly: return UInt8(LIBRADOS_LOCK_FLAG_MUST_RENEW)
        }
    }
}
