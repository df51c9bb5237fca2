import Foundation
import VDiskStore

/// One distinct block in a ``BlockTable`` or a spilled run: 24 bytes.
/// `mask` has bit *i* set when image *i* holds the block (0 = empty slot);
/// `csize` is the block's LZ4 size (raw size when LZ4 does not shrink it; 0 = not measured).
struct Slot {
    var k0: UInt64
    var k1: UInt32
    var csize: UInt32
    var mask: UInt64

    var key: BlockKey { BlockKey(k0: k0, k1: k1) }

    @inline(__always) static func less(_ a: Slot, _ b: Slot) -> Bool {
        a.k0 != b.k0 ? a.k0 < b.k0 : a.k1 < b.k1
    }
    @inline(__always) func sameKey(_ o: Slot) -> Bool { k0 == o.k0 && k1 == o.k1 }
}

/// An open-addressing hash table (linear probing, at most 70 % full) of the distinct blocks
/// of one block size over all images of the run. Memory: 24 bytes per slot, so 34 to 69 bytes
/// per distinct block depending on where the table is between doublings.
/// Not thread-safe: callers serialise access (the scanner takes one lock per batch).
final class BlockTable {
    let blockSize: Int
    private(set) var capacity: Int
    private(set) var count = 0
    private var slots: UnsafeMutablePointer<Slot>

    static let slotBytes = MemoryLayout<Slot>.stride

    init(blockSize: Int, capacity: Int) {
        precondition(capacity > 0 && capacity & (capacity - 1) == 0)
        self.blockSize = blockSize
        self.capacity = capacity
        slots = .allocate(capacity: capacity)
        slots.initialize(repeating: Slot(k0: 0, k1: 0, csize: 0, mask: 0), count: capacity)
    }

    deinit { slots.deallocate() }

    var bytes: Int64 { Int64(capacity) * Int64(BlockTable.slotBytes) }
    var maxCount: Int { BlockTable.maxCount(capacity: capacity) }

    static func maxCount(capacity: Int) -> Int { capacity / 10 * 7 + (capacity % 10) * 7 / 10 }

    /// The smallest power-of-two capacity that holds `entries` within the load limit.
    static func capacity(for entries: Int) -> Int {
        var c = 16
        while maxCount(capacity: c) < entries { c *= 2 }
        return c
    }

    /// Records that image `bit` holds `key`; true when the key is new to the table.
    @inline(__always)
    func insert(_ key: BlockKey, bit: UInt64) -> Bool {
        let m = capacity - 1
        var i = Int(truncatingIfNeeded: key.k0) & m
        while true {
            let s = slots[i]
            if s.mask == 0 {
                slots[i] = Slot(k0: key.k0, k1: key.k1, csize: 0, mask: bit)
                count += 1
                return true
            }
            if s.k0 == key.k0 && s.k1 == key.k1 {
                slots[i].mask = s.mask | bit
                return false
            }
            i = (i + 1) & m
        }
    }

    func setCompressedSize(_ key: BlockKey, _ size: UInt32) {
        let m = capacity - 1
        var i = Int(truncatingIfNeeded: key.k0) & m
        while slots[i].mask != 0 {
            if slots[i].k0 == key.k0 && slots[i].k1 == key.k1 { slots[i].csize = size; return }
            i = (i + 1) & m
        }
    }

    /// Rehashes into `newCapacity` slots (a larger power of two).
    func resize(to newCapacity: Int) {
        let old = slots, oldCap = capacity
        slots = .allocate(capacity: newCapacity)
        slots.initialize(repeating: Slot(k0: 0, k1: 0, csize: 0, mask: 0), count: newCapacity)
        capacity = newCapacity
        let m = newCapacity - 1
        for j in 0..<oldCap where old[j].mask != 0 {
            var i = Int(truncatingIfNeeded: old[j].k0) & m
            while slots[i].mask != 0 { i = (i + 1) & m }
            slots[i] = old[j]
        }
        old.deallocate()
    }

    /// Calls `body` with every occupied slot, in table order.
    func forEach(_ body: (Slot) throws -> Void) rethrows {
        for j in 0..<capacity where slots[j].mask != 0 { try body(slots[j]) }
    }

    /// Moves the occupied slots to the front and sorts them by key. The table is no longer a
    /// hash table afterwards: use the result, then call ``reset(capacity:)``.
    /// Sorting takes scratch memory of up to half the entries.
    func compactSorted() -> UnsafeMutableBufferPointer<Slot> {
        var n = 0
        for j in 0..<capacity where slots[j].mask != 0 {
            if j != n { slots[n] = slots[j] }
            n += 1
        }
        var buf = UnsafeMutableBufferPointer(start: slots, count: n)
        buf.sort(by: Slot.less)
        return buf
    }

    /// Empties the table, reallocating at `capacity` slots when that differs.
    func reset(capacity newCapacity: Int) {
        if newCapacity != capacity {
            slots.deallocate()
            slots = .allocate(capacity: newCapacity)
            capacity = newCapacity
        }
        slots.initialize(repeating: Slot(k0: 0, k1: 0, csize: 0, mask: 0), count: capacity)
        count = 0
    }

    /// Frees the slots (the table is unusable afterwards except through ``reset(capacity:)``).
    func release() {
        slots.deallocate()
        slots = .allocate(capacity: 1)
        slots.initialize(to: Slot(k0: 0, k1: 0, csize: 0, mask: 0))
        capacity = 1
        count = 0
    }
}

/// Spilled runs: files of sorted ``Slot``s in a private temporary directory, removed at the end.
final class SpillArea {
    let parent: String
    private(set) var directory: String?
    private var next = 0
    private(set) var runsWritten = 0
    private(set) var bytesWritten: Int64 = 0

    init(parent: String) { self.parent = parent }

    deinit { removeAll() }

    private func ensureDirectory() throws -> String {
        if let directory { return directory }
        var template = Array((parent.hasSuffix("/") ? parent : parent + "/").utf8CString.dropLast())
        template += Array("vdiskfs-analyze.XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { p -> String? in
            guard mkdtemp(p.baseAddress!) != nil else { return nil }
            return String(cString: p.baseAddress!)
        }
        guard let made else {
            throw StoreError.outputUnwritable(path: parent, reason: "cannot make a spill directory: \(errnoText())")
        }
        directory = made
        return made
    }

    /// Writes `slots` (sorted) to a new run file; returns its path.
    func write(_ slots: UnsafeBufferPointer<Slot>) throws -> String {
        let dir = try ensureDirectory()
        let path = "\(dir)/run-\(next)"
        next += 1
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw StoreError.outputUnwritable(path: path, reason: errnoText()) }
        defer { close(fd) }
        let raw = UnsafeRawBufferPointer(slots)
        var done = 0
        while done < raw.count {
            let n = Glibc.write(fd, raw.baseAddress! + done, min(raw.count - done, 1 << 30))
            if n < 0 {
                if errno == EINTR { continue }
                throw SpillArea.writeError(path)
            }
            done += n
        }
        runsWritten += 1
        bytesWritten += Int64(raw.count)
        return path
    }

    /// A writer for a merged run (multi-pass merge).
    func makeWriter() throws -> RunWriter {
        let dir = try ensureDirectory()
        let path = "\(dir)/run-\(next)"
        next += 1
        let w = try RunWriter(path: path)
        runsWritten += 1
        return w
    }

    func removeAll() {
        guard let directory else { return }
        if let d = opendir(directory) {
            while let e = readdir(d) {
                let name = withUnsafeBytes(of: e.pointee.d_name) { String(cString: $0.baseAddress!.assumingMemoryBound(to: CChar.self)) }
                if name != "." && name != ".." { unlink("\(directory)/\(name)") }
            }
            closedir(d)
        }
        rmdir(directory)
        self.directory = nil
    }

    static func writeError(_ path: String) -> StoreError {
        let e = errno
        if e == ENOSPC || e == EDQUOT { return .diskFull(path: path) }
        return .io(errno: e, context: "writing spill file \(path)")
    }
}

func errnoText(_ e: Int32 = errno) -> String { String(cString: strerror(e)) }

/// Buffered writer of sorted slots.
final class RunWriter {
    let path: String
    private let fd: Int32
    private var buffer: UnsafeMutablePointer<Slot>
    private var used = 0
    private static let bufferSlots = 4096

    init(path: String) throws {
        self.path = path
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw StoreError.outputUnwritable(path: path, reason: errnoText()) }
        buffer = .allocate(capacity: RunWriter.bufferSlots)
    }

    deinit { buffer.deallocate(); close(fd) }

    func append(_ s: Slot) throws {
        buffer[used] = s
        used += 1
        if used == RunWriter.bufferSlots { try flush() }
    }

    func flush() throws {
        let raw = UnsafeRawBufferPointer(start: buffer, count: used * BlockTable.slotBytes)
        var done = 0
        while done < raw.count {
            let n = Glibc.write(fd, raw.baseAddress! + done, raw.count - done)
            if n < 0 {
                if errno == EINTR { continue }
                throw SpillArea.writeError(path)
            }
            done += n
        }
        used = 0
    }
}

/// A sorted source of slots for the merge.
protocol SlotSource: AnyObject {
    /// The current slot, nil at the end.
    var current: Slot? { get }
    func advance() throws
}

/// A run file read back in 96 KiB pieces.
final class RunReader: SlotSource {
    let path: String
    private let fd: Int32
    private var buffer: UnsafeMutablePointer<Slot>
    private var filled = 0, position = 0
    private(set) var current: Slot?
    private static let bufferSlots = 4096

    init(path: String) throws {
        self.path = path
        fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw StoreError.io(errno: errno, context: "opening spill file \(path)") }
        buffer = .allocate(capacity: RunReader.bufferSlots)
        try advance()
    }

    deinit { buffer.deallocate(); close(fd) }

    func advance() throws {
        if position == filled {
            let raw = UnsafeMutableRawPointer(buffer)
            let want = RunReader.bufferSlots * BlockTable.slotBytes
            var got = 0
            while got < want {
                let n = read(fd, raw + got, want - got)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw StoreError.io(errno: errno, context: "reading spill file \(path)")
                }
                if n == 0 { break }
                got += n
            }
            guard got % BlockTable.slotBytes == 0 else {
                throw StoreError.io(errno: EIO, context: "spill file \(path) is truncated")
            }
            filled = got / BlockTable.slotBytes
            position = 0
            if filled == 0 { current = nil; return }
        }
        current = buffer[position]
        position += 1
    }
}

/// Sorted slots in memory (a compacted table).
final class MemoryRun: SlotSource {
    private let slots: UnsafeMutableBufferPointer<Slot>
    private var position = 0
    private(set) var current: Slot?

    init(_ slots: UnsafeMutableBufferPointer<Slot>) {
        self.slots = slots
        current = slots.isEmpty ? nil : slots[0]
    }

    func advance() throws {
        position += 1
        current = position < slots.count ? slots[position] : nil
    }
}

/// Merges sorted sources; slots of equal key are combined (masks OR-ed, the larger csize kept)
/// and handed to `sink` once, in key order.
func mergeRuns(_ sources: [SlotSource], into sink: (Slot) throws -> Void) throws {
    // A binary min-heap of source indices, ordered by their current slot.
    var heap: [Int] = []
    var heads: [Slot] = []
    heads.reserveCapacity(sources.count)
    for (i, s) in sources.enumerated() {
        heads.append(s.current ?? Slot(k0: 0, k1: 0, csize: 0, mask: 0))
        if s.current != nil { heap.append(i) }
    }
    func less(_ a: Int, _ b: Int) -> Bool { Slot.less(heads[a], heads[b]) }
    func siftDown(_ start: Int) {
        var i = start
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < heap.count && less(heap[l], heap[m]) { m = l }
            if r < heap.count && less(heap[r], heap[m]) { m = r }
            if m == i { return }
            heap.swapAt(i, m)
            i = m
        }
    }
    if heap.count > 1 { for i in stride(from: heap.count / 2 - 1, through: 0, by: -1) { siftDown(i) } }

    var pending: Slot?
    while let top = heap.first {
        let s = heads[top]
        if var p = pending, p.sameKey(s) {
            p.mask |= s.mask
            p.csize = max(p.csize, s.csize)
            pending = p
        } else {
            if let p = pending { try sink(p) }
            pending = s
        }
        try sources[top].advance()
        if let c = sources[top].current {
            heads[top] = c
        } else {
            heap[0] = heap[heap.count - 1]
            heap.removeLast()
        }
        if !heap.isEmpty { siftDown(0) }
    }
    if let p = pending { try sink(p) }
}
