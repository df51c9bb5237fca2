// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "vdiskfs",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "vdiskfs", targets: ["vdiskfs"]),
        .library(name: "VDiskStore", targets: ["VDiskStore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
    ],
    targets: [
        // System libraries, found through pkg-config.
        .systemLibrary(name: "CLZ4", pkgConfig: "liblz4", providers: [.apt(["liblz4-dev"])]),
        .systemLibrary(name: "CCrypto", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CFuse", pkgConfig: "fuse3", providers: [.apt(["libfuse3-dev"])]),
        // librados has no pkg-config file: the module map links "rados" itself.
        .systemLibrary(name: "CRados", providers: [.apt(["librados-dev"])]),
        // Thin C shims: what Swift cannot import directly (macros, inline functions, intrinsics).
        .target(name: "CSupport", cSettings: [.unsafeFlags(["-O3"])]),
        .target(name: "CFuseShim", dependencies: ["CFuse"]),
        // The deduplicating store. No FUSE, no command line.
        .target(
            name: "VDiskStore",
            dependencies: [
                "CLZ4", "CCrypto", "CSupport",
                .product(name: "SystemPackage", package: "swift-system"),
            ]),
        // The Ceph RADOS backend of the store; the only module that sees librados.
        .target(name: "VDiskRados", dependencies: ["VDiskStore", "CRados"]),
        // Image similarity analysis (the paper's section 2); needs no store.
        .target(name: "VDiskAnalyze", dependencies: ["VDiskStore"]),
        // The FUSE driver: store-backed file system over the libfuse low-level API.
        .target(
            name: "VDiskFUSE",
            dependencies: [
                "VDiskStore", "CFuseShim",
                .product(name: "SystemPackage", package: "swift-system"),
            ]),
        .executableTarget(
            name: "vdiskfs",
            dependencies: [
                "VDiskStore", "VDiskFUSE", "VDiskAnalyze", "VDiskRados",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),
        .testTarget(name: "VDiskStoreTests", dependencies: ["VDiskStore"], exclude: ["Fixtures"]),
        .testTarget(name: "VDiskAnalyzeTests", dependencies: ["VDiskAnalyze", "VDiskStore"]),
        .testTarget(name: "IntegrationTests", dependencies: ["VDiskStore"]),
        // The throw-away Ceph cluster that mount and RADOS tests share.
        .target(name: "CephTestSupport", path: "Tests/CephTestSupport"),
        .testTarget(name: "MountTests", dependencies: ["VDiskStore", "CephTestSupport"]),
        .testTarget(name: "RadosTests", dependencies: ["VDiskRados", "VDiskStore", "CephTestSupport"]),
    ],
    swiftLanguageModes: [.v5]
)
