/* A vtable that claims to be smaller than ABI v1.0 requires. */
#include <sluice_sink.h>
static const SluiceSinkVTable VT = { SLUICE_ABI_MAJOR, 0, 16, 0 };
const SluiceSinkVTable *sluice_sink_entry_v1(void) { return &VT; }
