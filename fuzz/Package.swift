// swift-tools-version:6.0
// Fuzz targets for the parsers of untrusted bytes in VDiskStore. A separate package so that
// the root package's `swift build` / `swift test` never build it. See README.md.
import PackageDescription

let fuzzTargets = ["fuzz-disk", "fuzz-records", "fuzz-pack", "fuzz-journal", "fuzz-index", "fuzz-store", "fuzz-diskcache"]

let package = Package(
    name: "vdiskfs-fuzz",
    dependencies: [.package(name: "vdiskfs", path: "..")],
    targets: [
        .target(
            name: "FuzzSupport",
            dependencies: [.product(name: "VDiskStore", package: "vdiskfs")]),
    ] + fuzzTargets.map { name in
        .executableTarget(
            name: name,
            dependencies: ["FuzzSupport", .product(name: "VDiskStore", package: "vdiskfs")],
            // No main: libFuzzer's main calls LLVMFuzzerTestOneInput.
            swiftSettings: [.unsafeFlags(["-parse-as-library"])])
    },
    swiftLanguageModes: [.v5]
)
