import Glibc
import VDiskStore

extension NodeAttributes {
    /// The attributes as the `struct stat` FUSE replies with. Times are nanoseconds since the
    /// epoch; atime is shown as mtime (the store keeps no access time).
    var stat: Glibc.stat {
        var st = Glibc.stat()
        st.st_ino = UInt(node)
        st.st_mode = mode
        st.st_nlink = UInt(linkCount)
        st.st_uid = uid
        st.st_gid = gid
        st.st_size = Int(clamping: size)
        st.st_blocks = Int(clamping: (allocatedBytes + 511) / 512)
        st.st_blksize = Int(blockSize == 0 ? 4096 : blockSize)
        st.st_mtim = timespec(nanoseconds: mtime)
        st.st_atim = st.st_mtim
        st.st_ctim = timespec(nanoseconds: ctime)
        return st
    }
}

extension timespec {
    /// A time given in nanoseconds since the epoch.
    init(nanoseconds ns: Int64) {
        let (q, r) = ns.quotientAndRemainder(dividingBy: 1_000_000_000)
        self = r < 0 ? timespec(tv_sec: Int(q - 1), tv_nsec: Int(r + 1_000_000_000)) : timespec(tv_sec: Int(q), tv_nsec: Int(r))
    }

    /// Nanoseconds since the epoch.
    var nanoseconds: Int64 { Int64(tv_sec) &* 1_000_000_000 &+ Int64(tv_nsec) }

    /// The current wall-clock time.
    static var now: timespec {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return ts
    }
}
