import CRados
import VDiskStore
