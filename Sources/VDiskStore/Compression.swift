import CLZ4

/// How a record's payload is encoded in a pack.
public enum Codec: UInt8, Sendable {
    case raw = 0
    case lz4 = 1
}

/// LZ4 block compression (liblz4), stored raw when that is not smaller.
public enum Compression {
    /// Worst-case compressed size for `count` input bytes.
    public static func bound(_ count: Int) -> Int { Int(LZ4_compressBound(Int32(count))) }

    /// Compresses `input` into `output` (which holds at least `bound(input.count)` bytes);
    /// returns the codec and the number of payload bytes written.
    public static func compress(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) -> (Codec, Int) {
        let n = LZ4_compress_default(input.baseAddress!.assumingMemoryBound(to: CChar.self),
                                     output.baseAddress!.assumingMemoryBound(to: CChar.self),
                                     Int32(input.count), Int32(output.count))
        if n > 0 && Int(n) < input.count { return (.lz4, Int(n)) }
        output.baseAddress!.copyMemory(from: input.baseAddress!, byteCount: input.count)
        return (.raw, input.count)
    }

    /// Decodes a payload into exactly `output.count` bytes; false when the payload is malformed.
    public static func decompress(_ codec: Codec, _ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) -> Bool {
        switch codec {
        case .raw:
            guard input.count == output.count else { return false }
            if input.count > 0 { output.baseAddress!.copyMemory(from: input.baseAddress!, byteCount: input.count) }
            return true
        case .lz4:
            if output.count == 0 { return input.count == 0 }
            let n = LZ4_decompress_safe(input.baseAddress!.assumingMemoryBound(to: CChar.self),
                                        output.baseAddress!.assumingMemoryBound(to: CChar.self),
                                        Int32(input.count), Int32(output.count))
            return Int(n) == output.count
        }
    }

    /// Decodes the first `output.count` bytes of a payload whose whole raw length is
    /// `rawLength` (a member of a grouped record without decoding the members after it);
    /// false when the payload is malformed.
    public static func decompressPrefix(_ codec: Codec, _ input: UnsafeRawBufferPointer, rawLength: Int,
                                        into output: UnsafeMutableRawBufferPointer) -> Bool {
        guard output.count <= rawLength else { return false }
        switch codec {
        case .raw:
            guard input.count == rawLength else { return false }
            if output.count > 0 { output.baseAddress!.copyMemory(from: input.baseAddress!, byteCount: output.count) }
            return true
        case .lz4:
            if output.count == 0 { return true }
            let n = LZ4_decompress_safe_partial(input.baseAddress!.assumingMemoryBound(to: CChar.self),
                                                output.baseAddress!.assumingMemoryBound(to: CChar.self),
                                                Int32(input.count), Int32(output.count), Int32(output.count))
            return Int(n) == output.count
        }
    }
}
