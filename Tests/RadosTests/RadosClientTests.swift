import XCTest
@testable import VDiskRados
