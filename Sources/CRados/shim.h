// librados ships no pkg-config file: this header plus `link "rados"` in the module map
// is how Swift finds it (Debian: librados-dev).
#include <rados/librados.h>
