import Foundation

// Text, JSON and CSV renderings of an ``AnalysisReport``.

extension AnalysisReport {
    /// "50.9 %", or "n/a" when there is no data to take a share of.
    static func percent(_ v: Double?) -> String {
        guard let v else { return "n/a" }
        return String(format: "%.1f %%", v * 100)
    }

    private static func bytes(_ v: Int64?) -> String {
        guard let v else { return "n/a" }
        return AnalyzeOptions.formatBytes(v)
    }

    /// Readable tables for standard output.
    public func renderText() -> String {
        var out = ""
        let n = images.count
        switch method {
        case .blocks:
            let bs = AnalyzeOptions.formatBlockSize(blockSize ?? 0)
            out += "Images (at \(bs) blocks; self-duplication is a share of the image's non-zero data)\n"
            var rows = [["image", "size", "zero", "non-zero", "unique", "self-dup", "est. store (LZ4)"]]
            for im in images {
                rows.append([im.label, Self.bytes(im.size), Self.percent(im.zeroShare), Self.bytes(im.nonzeroBytes),
                             Self.bytes(im.uniqueBytes), Self.percent(im.selfDuplication),
                             Self.bytes(im.estimatedStoreBytes)])
            }
            out += table(rows, rightAligned: Set(1...6))
        case .files:
            out += "Directories (whole files; hard-linked copies counted once)\n"
            var rows = [["directory", "files", "bytes", "zero files", "unique", "self-dup", "hard links", "skipped"]]
            for im in images {
                rows.append([im.label, "\(im.files ?? 0)", Self.bytes(im.size), Self.percent(im.zeroShare),
                             Self.bytes(im.uniqueBytes), Self.percent(im.selfDuplication),
                             "\(im.hardLinksDiscounted ?? 0)", "\(im.skipped ?? 0)"])
            }
            out += table(rows, rightAligned: Set(1...7))
        }

        out += "\n"
        let unit = method == .blocks ? "non-zero data" : "file data"
        let at = method == .blocks ? " at \(AnalyzeOptions.formatBlockSize(blockSize ?? 0))" : " (files)"
        out += "Similarity\(at): share of the pair's \(unit) that is duplicate (diagonal: self-duplication)\n"
        var m = [[""] + images.map(\.label)]
        for i in 0..<n { m.append([images[i].label] + matrix[i].map(Self.percent)) }
        out += table(m, rightAligned: Set(1...max(1, n)))

        guard method == .blocks else { return out }
        out += "\nBlock sizes (all images together; duplicate = share of non-zero data that is a duplicate)\n"
        let pairs = n == 3 ? [(0, 1), (0, 2), (1, 2)] : []
        var header = ["block", "zero", "non-zero", "unique blocks", "unique", "duplicate"]
        header += pairs.map { "\(images[$0.0].label)~\(images[$0.1].label)" }
        header += ["est. store (LZ4)", "fs-aware"]
        var rows = [header]
        for r in blockSizes {
            var row = [AnalyzeOptions.formatBlockSize(r.blockSize), Self.percent(r.zeroShare), Self.bytes(r.nonzeroBytes),
                       "\(r.uniqueBlocks)", Self.bytes(r.uniqueBytes), Self.percent(r.duplicateShare)]
            row += pairs.map { Self.percent(r.matrix[$0.0][$0.1]) }
            row += [Self.bytes(r.estimatedStoreBytes), "n/a"]
            rows.append(row)
        }
        out += table(rows, rightAligned: Set(0..<header.count))
        if let p = primary {
            let logical = blockSizes.first?.totalBytes ?? 0
            out += "\nEstimated store size (raw ingest, LZ4 per block, at \(AnalyzeOptions.formatBlockSize(p.blockSize))): "
            out += "\(Self.bytes(p.estimatedStoreBytes)) for \(Self.bytes(logical)) of images"
            out += " (payload only: record headers and index not included; file-system-aware ingest: n/a)\n"
        }
        return out
    }

    /// One JSON object (keys in a fixed order; shares as fractions; null where not defined).
    public func renderJSON() -> String {
        let j = JSONWriter()
        j.object {
            j.key("method"); j.string(method.rawValue)
            j.key("block_size"); j.int(blockSize.map(Int64.init))
            j.key("images")
            j.array(images) { im in
                j.object {
                    j.key("path"); j.string(im.path)
                    j.key("label"); j.string(im.label)
                    j.key("size"); j.int(im.size)
                    if method == .files {
                        j.key("files"); j.int(im.files.map(Int64.init))
                        j.key("hard_links_discounted"); j.int(im.hardLinksDiscounted.map(Int64.init))
                        j.key("skipped"); j.int(im.skipped.map(Int64.init))
                    }
                    j.key("zero_share"); j.number(im.zeroShare)
                    j.key("nonzero_bytes"); j.int(im.nonzeroBytes)
                    j.key("unique_bytes"); j.int(im.uniqueBytes)
                    j.key("self_duplication"); j.number(im.selfDuplication)
                    if method == .blocks {
                        j.key("estimated_store_bytes"); j.int(im.estimatedStoreBytes)
                        j.key("block_sizes")
                        j.array(im.perBlockSize) { l in
                            j.object {
                                j.key("block_size"); j.int(Int64(l.blockSize))
                                j.key("blocks"); j.int(l.blocks)
                                j.key("zero_blocks"); j.int(l.zeroBlocks)
                                j.key("zero_share"); j.number(l.zeroShare)
                                j.key("nonzero_bytes"); j.int(l.nonzeroBytes)
                                j.key("unique_bytes"); j.int(l.uniqueBytes)
                                j.key("unique_blocks"); j.int(l.uniqueBlocks)
                                j.key("self_duplication"); j.number(l.selfDuplication)
                                j.key("estimated_store_bytes"); j.int(l.estimatedStoreBytes)
                            }
                        }
                    }
                }
            }
            j.key("matrix"); j.matrix(matrix)
            j.key("block_sizes")
            j.array(blockSizes) { r in
                j.object {
                    j.key("block_size"); j.int(Int64(r.blockSize))
                    j.key("total_bytes"); j.int(r.totalBytes)
                    j.key("zero_share"); j.number(r.zeroShare)
                    j.key("nonzero_bytes"); j.int(r.nonzeroBytes)
                    j.key("unique_bytes"); j.int(r.uniqueBytes)
                    j.key("unique_blocks"); j.int(r.uniqueBlocks)
                    j.key("duplicate_share"); j.number(r.duplicateShare)
                    j.key("estimated_store_bytes"); j.int(r.estimatedStoreBytes)
                    j.key("estimated_fs_aware_store_bytes"); j.int(r.estimatedFsAwareStoreBytes)
                    j.key("matrix"); j.matrix(r.matrix)
                }
            }
            j.key("estimates")
            if method == .blocks, let p = primary {
                j.object {
                    j.key("block_size"); j.int(Int64(p.blockSize))
                    j.key("logical_bytes"); j.int(p.totalBytes)
                    j.key("raw_ingest_lz4_bytes"); j.int(p.estimatedStoreBytes)
                    j.key("fs_aware_lz4_bytes"); j.int(nil)
                    j.key("raw_ingest_lz4_bytes_by_block_size")
                    j.object {
                        for r in blockSizes { j.key(String(r.blockSize)); j.int(r.estimatedStoreBytes) }
                    }
                }
            } else {
                j.null()
            }
            j.key("spilled_runs"); j.int(Int64(spilledRuns))
            j.key("spilled_bytes"); j.int(spilledBytes)
            j.key("hole_bytes_not_read"); j.int(holeBytes)
            j.key("bytes_analyzed"); j.int(bytesAnalyzed)
            j.key("seconds"); j.number(seconds, digits: 3)
        }
        return j.text + "\n"
    }

    /// The similarity matrix as CSV: a header row of labels, then one row per image; shares as
    /// fractions with six decimals, empty where not defined.
    public func renderCSV() -> String {
        func cell(_ s: String) -> String {
            s.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" })
                ? "\"" + s.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : s
        }
        var out = ([cell(method == .blocks ? "image" : "directory")] + images.map { cell($0.label) }).joined(separator: ",") + "\n"
        for (i, im) in images.enumerated() {
            out += ([cell(im.label)] + matrix[i].map { $0.map { String(format: "%.6f", $0) } ?? "" }).joined(separator: ",") + "\n"
        }
        return out
    }
}

/// Columns padded to their widest cell.
func table(_ rows: [[String]], rightAligned: Set<Int>) -> String {
    let cols = rows.map(\.count).max() ?? 0
    var width = Array(repeating: 0, count: cols)
    for r in rows { for (i, c) in r.enumerated() { width[i] = max(width[i], c.count) } }
    var out = ""
    for r in rows {
        var line = " "
        for (i, c) in r.enumerated() {
            let pad = String(repeating: " ", count: width[i] - c.count)
            line += " " + (rightAligned.contains(i) ? pad + c : c + pad)
        }
        while line.hasSuffix(" ") { line.removeLast() }
        out += line + "\n"
    }
    return out
}

/// A small JSON writer that keeps keys in the order written.
final class JSONWriter {
    private(set) var text = ""
    private var counts: [Int] = []  // items written in each open container
    private var afterKey = false

    private func prefix() {
        if afterKey { afterKey = false; return }
        guard !counts.isEmpty else { return }
        if counts[counts.count - 1] > 0 { text += "," }
        counts[counts.count - 1] += 1
        text += "\n" + String(repeating: "  ", count: counts.count)
    }

    func key(_ k: String) {
        prefix()
        text += JSONWriter.quote(k) + ": "
        afterKey = true
    }

    private func scalar(_ s: String) {
        prefix()
        text += s
    }

    func object(_ body: () -> Void) {
        open("{")
        body()
        close("}")
    }

    func array<T>(_ items: [T], _ body: (T) -> Void) {
        open("[")
        for x in items { body(x) }
        close("]")
    }

    private func open(_ c: String) {
        prefix()
        text += c
        counts.append(0)
    }

    private func close(_ c: String) {
        if counts.removeLast() > 0 { text += "\n" + String(repeating: "  ", count: counts.count) }
        text += c
    }

    func string(_ s: String) { scalar(JSONWriter.quote(s)) }
    func int(_ v: Int64?) { scalar(v.map { String($0) } ?? "null") }
    func null() { scalar("null") }
    func number(_ v: Double?, digits: Int = 6) {
        guard let v, v.isFinite else { scalar("null"); return }
        var s = String(format: "%.\(digits)f", v)
        while s.contains(".") && (s.hasSuffix("0") || s.hasSuffix(".")) { s.removeLast() }
        scalar(s)
    }

    /// A matrix on one line per row.
    func matrix(_ m: [[Double?]]) {
        open("[")
        for row in m {
            var line = "["
            line += row.map { v -> String in
                guard let v, v.isFinite else { return "null" }
                var s = String(format: "%.6f", v)
                while s.contains(".") && (s.hasSuffix("0") || s.hasSuffix(".")) { s.removeLast() }
                return s
            }.joined(separator: ", ")
            line += "]"
            scalar(line)
        }
        close("]")
    }

    static func quote(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where u.value < 0x20: out += String(format: "\\u%04x", u.value)
            default: out.unicodeScalars.append(u)
            }
        }
        return out + "\""
    }
}
