/// Reads a file front to back in large windows, for the scans that walk records of
/// bounded size (packs, disk cache segments, journal segments): memory is one window plus
/// the largest record, however long the file.
final class WindowedReader {
    private let buffer: UnsafeMutableRawBufferPointer
    private let window: Int
    private let read: (UnsafeMutableRawBufferPointer, Int64) throws -> Int
    /// File offset of `buffer`'s first byte, and how many bytes it holds.
    private var start: Int64 = 0
    private var held = 0

    /// `window`: bytes fetched per read; `largestRecord`: the most one `bytes(at:count:)`
    /// may ask for. `read` fills a buffer from a file offset and returns the bytes read.
    init(window: Int, largestRecord: Int, read: @escaping (UnsafeMutableRawBufferPointer, Int64) throws -> Int) {
        buffer = .allocate(byteCount: window + largestRecord, alignment: 16)
        self.window = window
        self.read = read
    }

    deinit { buffer.deallocate() }

    /// The bytes [offset, offset + count), valid until the next call; nil when the file ends
    /// first. Offsets must not go backwards.
    func bytes(at offset: Int64, count: Int) throws -> UnsafeRawPointer? {
        precondition(offset >= start && count <= buffer.count)
        if offset + Int64(count) > start + Int64(held) {
            let keep = max(0, Int(start + Int64(held) - offset))
            if keep > 0 { buffer.baseAddress!.copyMemory(from: buffer.baseAddress! + Int(offset - start), byteCount: keep) }
            start = offset
            held = keep
            let want = min(max(count, window), buffer.count) - held
            if want > 0 { held += try read(UnsafeMutableRawBufferPointer(rebasing: buffer[held..<(held + want)]), start + Int64(held)) }
            guard held >= count else { return nil }
        }
        return UnsafeRawPointer(buffer.baseAddress! + Int(offset - start))
    }
}
