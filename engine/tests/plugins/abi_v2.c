/* A plugin built for a future ABI: only the v2 entry symbol. */
#include <sluice_sink.h>
static const SluiceSinkVTable VT = { 2, 0, sizeof(SluiceSinkVTable), 0 };
const SluiceSinkVTable *sluice_sink_entry_v2(void) { return &VT; }
