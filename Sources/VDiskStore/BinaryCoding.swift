/// Little-endian encoder for the store's metadata formats.
struct ByteWriter {
    var bytes: [UInt8] = []

    init(capacity: Int = 0) { bytes.reserveCapacity(capacity) }

    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func i64(_ v: Int64) { u64(UInt64(bitPattern: v)) }
    mutating func hash(_ h: ChunkHash) {
        let n = bytes.count
        bytes.append(contentsOf: repeatElement(0, count: 32))
        bytes.withUnsafeMutableBytes { h.store(to: $0.baseAddress! + n) }
    }
    mutating func raw(_ b: [UInt8]) { bytes.append(contentsOf: b) }
    mutating func string(_ s: String) {
        let u = Array(s.utf8)
        u16(UInt16(u.count))
        bytes.append(contentsOf: u)
    }
}

/// Little-endian decoder; every read is bounds-checked and throws ``StoreError/corruptStore(detail:)``.
struct ByteReader {
    let bytes: [UInt8]
    var offset: Int = 0
    let what: String

    init(_ bytes: [UInt8], what: String) { self.bytes = bytes; self.what = what }

    var remaining: Int { bytes.count - offset }

    private mutating func take(_ n: Int) throws -> Int {
        guard n >= 0, offset + n <= bytes.count else {
            throw StoreError.corruptStore(detail: "\(what) is truncated")
        }
        defer { offset += n }
        return offset
    }

    mutating func u8() throws -> UInt8 { bytes[try take(1)] }
    mutating func u16() throws -> UInt16 {
        let o = try take(2)
        return bytes.withUnsafeBytes { UInt16(littleEndian: $0.loadUnaligned(fromByteOffset: o, as: UInt16.self)) }
    }
    mutating func u32() throws -> UInt32 {
        let o = try take(4)
        return bytes.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: o, as: UInt32.self)) }
    }
    mutating func u64() throws -> UInt64 {
        let o = try take(8)
        return bytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: o, as: UInt64.self)) }
    }
    mutating func i64() throws -> Int64 { Int64(bitPattern: try u64()) }
    mutating func hash() throws -> ChunkHash {
        let o = try take(32)
        return bytes.withUnsafeBytes { ChunkHash(bytes: $0.baseAddress! + o) }
    }
    mutating func raw(_ n: Int) throws -> [UInt8] {
        let o = try take(n)
        return Array(bytes[o..<o + n])
    }
    mutating func string() throws -> String {
        let n = Int(try u16())
        let o = try take(n)
        guard let s = String(validating: bytes[o..<o + n], as: UTF8.self) else {
            throw StoreError.corruptStore(detail: "\(what) holds a name that is not UTF-8")
        }
        return s
    }
}
