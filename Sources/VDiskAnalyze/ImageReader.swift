import Foundation
import VDiskStore

/// Reads an image front to back in windows, once. Regular files and block devices are read
/// with `pread` at known offsets; a regular file's holes (`SEEK_DATA`) are not read at all but
/// reported as zero windows; pipes and character devices are read until end of file.
/// `SEEK_DATA` (Linux, FreeBSD, Solaris): Glibc hides it from Swift behind _GNU_SOURCE.
private let seekData: Int32 = 3

final class ImageReader {
    let path: String
    private let fd: Int32
    /// Bytes in the image, nil when it can only be streamed.
    let size: Int64?
    private let isRegular: Bool
    private var offset: Int64 = 0
    /// Where SEEK_DATA last said data resumes (Int64.max: no more data; -1: not supported).
    private var nextData: Int64 = 0
    private var streamEnded = false

    enum Window {
        case data(Int)  // this many bytes were read into the buffer
        case hole(Int)  // this many bytes are a hole: zeros, nothing read
        case end
    }

    init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw StoreError.inputUnreadable(path: path, reason: errnoText()) }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let r = errnoText()
            close(fd)
            throw StoreError.inputUnreadable(path: path, reason: r)
        }
        let kind = st.st_mode & S_IFMT
        if kind == S_IFDIR {
            close(fd)
            throw StoreError.inputUnreadable(path: path, reason: "is a directory (use --files to compare directories)")
        }
        self.fd = fd
        isRegular = kind == S_IFREG
        if isRegular {
            size = Int64(st.st_size)
            _ = posix_fadvise(fd, 0, 0, Int32(POSIX_FADV_SEQUENTIAL))
        } else if kind == S_IFBLK {
            let end = lseek(fd, 0, SEEK_END)
            size = end >= 0 ? Int64(end) : nil
        } else {
            size = nil
        }
    }

    deinit { close(fd) }

    /// Bytes delivered so far.
    var position: Int64 { offset }

    /// Reads the next window of at most `buffer.count` bytes.
    func next(into buffer: UnsafeMutableRawBufferPointer) throws -> Window {
        guard let size else { return try nextStreamed(into: buffer) }
        guard offset < size else { return .end }
        let len = Int(min(Int64(buffer.count), size - offset))
        if isRegular && nextData >= 0 {
            // [offset, nextData) is known to be a hole; ask again once past it.
            if nextData <= offset {
                let d = lseek(fd, off_t(offset), seekData)
                if d >= 0 { nextData = Int64(d) } else if errno == ENXIO { nextData = Int64.max } else { nextData = -1 }
            }
            if nextData >= offset + Int64(len) {
                offset += Int64(len)
                return .hole(len)
            }
        }
        var got = 0
        while got < len {
            let n = pread(fd, buffer.baseAddress! + got, len - got, off_t(offset + Int64(got)))
            if n < 0 {
                if errno == EINTR { continue }
                throw StoreError.inputUnreadable(path: path, reason: errnoText())
            }
            if n == 0 {
                throw StoreError.inputUnreadable(path: path, reason: "it shrank while being read")
            }
            got += n
        }
        offset += Int64(len)
        return .data(len)
    }

    private func nextStreamed(into buffer: UnsafeMutableRawBufferPointer) throws -> Window {
        guard !streamEnded else { return .end }
        var got = 0
        while got < buffer.count {
            let n = read(fd, buffer.baseAddress! + got, buffer.count - got)
            if n < 0 {
                if errno == EINTR { continue }
                throw StoreError.inputUnreadable(path: path, reason: errnoText())
            }
            if n == 0 { streamEnded = true; break }
            got += n
        }
        offset += Int64(got)
        return got == 0 ? .end : .data(got)
    }
}
