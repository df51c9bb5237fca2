import SystemPackage

/// The one error type of vdiskfs. The command line maps it to an exit code
/// (``exitCode``), the FUSE driver to an errno (``errno``); nothing else inspects it.
public enum StoreError: Error, Equatable, CustomStringConvertible, Sendable {
    /// The store path does not exist.
    case storeMissing(path: String)
    /// The path exists but holds no vdiskfs store.
    case notAStore(path: String)
    /// The store's own metadata is damaged or of an unknown format version.
    case corruptStore(detail: String)
    /// Another process holds the store's lock.
    case storeLocked(path: String, holder: String)
    /// A store, image or directory of that name exists already.
    case nameExists(name: String)
    /// No image or directory of that name.
    case noSuchImage(name: String)
    /// The input file could not be opened or read.
    case inputUnreadable(path: String, reason: String)
    /// The disk holding the store (or the output) is full.
    case diskFull(path: String)
    /// A chunk failed its checksum or hash: the data is not returned.
    case damagedChunk(detail: String)
    /// The name is not a valid image path.
    case invalidName(name: String, reason: String)
    /// A name component is over 255 bytes, or a whole path over the format's 65535.
    case nameTooLong(name: String)
    /// An argument is out of range or malformed.
    case invalidArgument(String)
    /// The target is read-only (a snapshot).
    case readOnly(name: String)
    /// The output could not be written.
    case outputUnwritable(path: String, reason: String)
    /// The image is busy (open for writing on a mount).
    case busy(name: String)
    /// Another host (or process) holds the image's write lease on a shared store.
    case leaseHeld(image: String, holder: String)
    /// Any other operating-system failure, with what was being done.
    case io(errno: Int32, context: String)

    public var description: String {
        switch self {
        case .storeMissing(let p) where p.hasPrefix("rados://"):
            return "\(p): no such pool (an administrator creates pools: 'ceph osd pool create NAME')"
        case .storeMissing(let p): return "store \(p) does not exist (create it with 'vdiskfs init -s \(p)')"
        case .notAStore(let p): return "\(p) is not a vdiskfs store"
        case .corruptStore(let d): return "store is damaged: \(d) (run 'vdiskfs verify')"
        case .storeLocked(let p, let h): return "store \(p) is in use by \(h)"
        case .nameExists(let n): return "\(n) already exists"
        case .noSuchImage(let n): return "no such image: \(n)"
        case .inputUnreadable(let p, let r): return "cannot read \(p): \(r)"
        case .diskFull(let p): return "no space left on the device holding \(p)"
        case .damagedChunk(let d): return "damaged data: \(d)"
        case .invalidName(let n, let r): return "invalid image name '\(n)': \(r)"
        case .nameTooLong(let n): return "name too long: \(n.prefix(64))..."
        case .invalidArgument(let s): return s
        case .readOnly(let n): return "\(n) is read-only"
        case .outputUnwritable(let p, let r): return "cannot write \(p): \(r)"
        case .busy(let n): return "\(n) is busy"
        case .leaseHeld(let i, let h): return "image \(i) is being written by \(h)"
        case .io(let e, let c): return "\(c): \(Errno(rawValue: e))"
        }
    }

    /// The documented exit code of the `vdiskfs` command for this error (see vdiskfs(1)).
    public var exitCode: Int32 {
        switch self {
        case .io: return 1
        case .storeMissing: return 10
        case .notAStore: return 11
        case .corruptStore: return 12
        case .storeLocked: return 13
        case .nameExists: return 14
        case .noSuchImage: return 15
        case .inputUnreadable: return 16
        case .diskFull: return 17
        case .damagedChunk: return 18
        case .invalidName, .invalidArgument, .nameTooLong: return 19
        case .readOnly: return 20
        case .outputUnwritable: return 21
        case .busy, .leaseHeld: return 22
        }
    }

    /// The errno the FUSE driver answers with.
    public var errno: Int32 {
        switch self {
        case .storeMissing, .noSuchImage: return Errno.noSuchFileOrDirectory.rawValue
        case .nameExists: return Errno.fileExists.rawValue
        case .diskFull: return Errno.noSpace.rawValue
        case .readOnly: return Errno.readOnlyFileSystem.rawValue
        case .invalidName, .invalidArgument: return Errno.invalidArgument.rawValue
        case .nameTooLong: return Errno.fileNameTooLong.rawValue
        case .busy, .storeLocked, .leaseHeld: return Errno.resourceBusy.rawValue
        case .io(let e, _): return e
        case .notAStore, .corruptStore, .damagedChunk, .inputUnreadable, .outputUnwritable:
            return Errno.ioError.rawValue
        }
    }

    /// Maps an operating-system error met while doing `context` on `path`.
    static func system(_ error: any Error, _ context: String, path: String) -> StoreError {
        if let e = error as? StoreError { return e }
        guard let error = error as? Errno else { return .io(errno: Errno.ioError.rawValue, context: context) }
        if error == .noSpace || error == .diskQuotaExceeded { return .diskFull(path: path) }
        return .io(errno: error.rawValue, context: context)
    }
}
