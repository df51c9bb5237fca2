import Foundation
import VDiskStore

extension AnalysisReport {
    /// A self-contained SVG: a heatmap of the similarity matrix (white 0 % to dark blue 100 %)
    /// and, in blocks mode, bar charts of the block-size table (duplicate share and estimated
    /// LZ4 store size per block size).
    public func renderSVG() -> String {
        let n = images.count
        let labelWidth = min(220, 40 + 7 * (images.map(\.label.count).max() ?? 4))
        let cell = max(28, min(72, 480 / max(1, n)))
        let heatLeft = 20 + labelWidth
        let heatTop = 70 + labelWidth  // column labels are written at 45°
        let heatSize = cell * n
        let chartLeft = heatLeft + heatSize + 80
        let chartWidth = method == .blocks ? 60 + 70 * blockSizes.count : 0
        let what = method == .blocks
            ? "Similarity at \(AnalyzeOptions.formatBlockSize(blockSize ?? 0)) blocks (share of the pair's non-zero data that is duplicate)"
            : "Similarity of whole files (share of the pair's file data that is duplicate)"
        // Wide enough for the title (15 px bold: about 8.5 px a character) and both parts.
        let width = max(chartLeft + chartWidth + 40, 40 + what.count * 17 / 2, heatLeft + 240)
        let chartHeight = 200
        let heatBottom = heatTop + heatSize + 60
        let height = max(heatBottom, method == .blocks ? 60 + 2 * (chartHeight + 90) : 0)

        var s = """
            <?xml version="1.0" encoding="UTF-8"?>
            <svg xmlns="http://www.w3.org/2000/svg" width="\(width)" height="\(height)" viewBox="0 0 \(width) \(height)" \
            font-family="Helvetica, Arial, sans-serif" font-size="12">
            <rect width="100%" height="100%" fill="white"/>

            """
        s += "<text x=\"20\" y=\"24\" font-size=\"15\" font-weight=\"bold\">\(xml(what))</text>\n"
        s += "<text x=\"20\" y=\"42\" fill=\"#555\">Diagonal: self-duplication of each \(method == .blocks ? "image" : "directory").</text>\n"

        // Heatmap.
        for j in 0..<n {
            let x = heatLeft + j * cell + cell / 2
            s += "<text x=\"\(x)\" y=\"\(heatTop - 8)\" transform=\"rotate(-45 \(x) \(heatTop - 8))\">\(xml(images[j].label))</text>\n"
        }
        for i in 0..<n {
            let y = heatTop + i * cell
            s += "<text x=\"\(heatLeft - 8)\" y=\"\(y + cell / 2 + 4)\" text-anchor=\"end\">\(xml(images[i].label))</text>\n"
            for j in 0..<n {
                let v = matrix[i][j]
                let x = heatLeft + j * cell
                s += "<rect x=\"\(x)\" y=\"\(y)\" width=\"\(cell)\" height=\"\(cell)\" fill=\"\(heatColor(v))\" stroke=\"white\">"
                s += "<title>\(xml(images[i].label)) / \(xml(images[j].label)): \(Self.percent(v))</title></rect>\n"
                let ink = (v ?? 0) > 0.55 ? "white" : "black"
                let fs = cell >= 50 ? 12 : 9
                s += "<text x=\"\(x + cell / 2)\" y=\"\(y + cell / 2 + 4)\" text-anchor=\"middle\" font-size=\"\(fs)\" fill=\"\(ink)\">"
                s += "\(v.map { String(format: "%.1f", $0 * 100) } ?? "n/a")</text>\n"
            }
        }
        // Colour scale.
        let scaleY = heatTop + heatSize + 20
        for k in 0..<10 {
            s += "<rect x=\"\(heatLeft + k * 20)\" y=\"\(scaleY)\" width=\"20\" height=\"10\" fill=\"\(heatColor(Double(k) / 9))\"/>\n"
        }
        s += "<text x=\"\(heatLeft)\" y=\"\(scaleY + 24)\" font-size=\"10\">0 %</text>\n"
        s += "<text x=\"\(heatLeft + 200)\" y=\"\(scaleY + 24)\" font-size=\"10\" text-anchor=\"end\">100 %</text>\n"

        if method == .blocks && !blockSizes.isEmpty {
            let labels = blockSizes.map { AnalyzeOptions.formatBlockSize($0.blockSize) }
            let dup = blockSizes.map { $0.duplicateShare ?? 0 }
            s += barChart(title: "Duplicate share of non-zero data, all images", x: chartLeft, y: 70,
                          width: chartWidth, height: chartHeight, labels: labels, values: dup, maxValue: 1,
                          format: { String(format: "%.1f %%", $0 * 100) }, color: "#2171b5")
            let est = blockSizes.map { Double($0.estimatedStoreBytes ?? 0) }
            if blockSizes.contains(where: { $0.estimatedStoreBytes != nil }) {
                s += barChart(title: "Estimated store size (raw ingest, LZ4)", x: chartLeft, y: 70 + chartHeight + 90,
                              width: chartWidth, height: chartHeight, labels: labels, values: est,
                              maxValue: max(1, est.max() ?? 1),
                              format: { AnalyzeOptions.formatBytes(Int64($0)) }, color: "#6a51a3")
            }
        }
        s += "</svg>\n"
        return s
    }

    private func barChart(title: String, x: Int, y: Int, width: Int, height: Int, labels: [String], values: [Double],
                          maxValue: Double, format: (Double) -> String, color: String) -> String {
        var s = "<g>\n<text x=\"\(x)\" y=\"\(y)\" font-weight=\"bold\">\(xml(title))</text>\n"
        let top = y + 20
        let base = top + height
        let scale = maxValue * 1.1  // headroom for the value written above the tallest bar
        s += "<line x1=\"\(x)\" y1=\"\(base)\" x2=\"\(x + width)\" y2=\"\(base)\" stroke=\"#333\"/>\n"
        s += "<line x1=\"\(x)\" y1=\"\(top)\" x2=\"\(x)\" y2=\"\(base)\" stroke=\"#333\"/>\n"
        let slot = labels.isEmpty ? 0 : (width - 20) / labels.count
        for (i, v) in values.enumerated() {
            let h = scale > 0 ? Int((Double(height) * min(1, max(0, v / scale))).rounded()) : 0
            let bx = x + 10 + i * slot + slot / 6
            let bw = slot * 2 / 3
            s += "<rect x=\"\(bx)\" y=\"\(base - h)\" width=\"\(bw)\" height=\"\(h)\" fill=\"\(color)\">"
            s += "<title>\(xml(labels[i])): \(xml(format(v)))</title></rect>\n"
            s += "<text x=\"\(bx + bw / 2)\" y=\"\(base - h - 4)\" text-anchor=\"middle\" font-size=\"10\">\(xml(format(v)))</text>\n"
            s += "<text x=\"\(bx + bw / 2)\" y=\"\(base + 14)\" text-anchor=\"middle\" font-size=\"11\">\(xml(labels[i]))</text>\n"
        }
        s += "<text x=\"\(x + width / 2)\" y=\"\(base + 32)\" text-anchor=\"middle\" fill=\"#555\">block size</text>\n</g>\n"
        return s
    }
}

/// White (0) to dark blue (1); grey for n/a.
private func heatColor(_ v: Double?) -> String {
    guard let v, v.isFinite else { return "#dddddd" }
    let t = min(1, max(0, v))
    let from = (247.0, 251.0, 255.0), to = (8.0, 48.0, 107.0)
    func c(_ a: Double, _ b: Double) -> Int { Int((a + (b - a) * t).rounded()) }
    return String(format: "#%02x%02x%02x", c(from.0, to.0), c(from.1, to.1), c(from.2, to.2))
}

private func xml(_ s: String) -> String {
    var out = ""
    for ch in s {
        switch ch {
        case "&": out += "&amp;"
        case "<": out += "&lt;"
        case ">": out += "&gt;"
        case "\"": out += "&quot;"
        case "'": out += "&apos;"
        default:
            // XML 1.0 allows no control characters but tab, newline and carriage return.
            if let u = ch.unicodeScalars.first, ch.unicodeScalars.count == 1, u.value < 0x20 || u.value == 0x7f {
                out += "?"
            } else {
                out.append(ch)
            }
        }
    }
    return out
}

extension AnalysisReport {
    /// Writes ``renderSVG()`` to `path` (replacing it); ``StoreError/outputUnwritable(path:reason:)``
    /// when that fails.
    public func writeSVG(to path: String) throws {
        let data = Array(renderSVG().utf8)
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw StoreError.outputUnwritable(path: path, reason: errnoText()) }
        defer { close(fd) }
        var done = 0
        while done < data.count {
            let n = data[done...].withUnsafeBytes { write(fd, $0.baseAddress!, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == ENOSPC || errno == EDQUOT { throw StoreError.diskFull(path: path) }
                throw StoreError.outputUnwritable(path: path, reason: errnoText())
            }
            done += n
        }
    }
}
