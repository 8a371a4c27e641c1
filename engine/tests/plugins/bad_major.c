/* The v1 symbol, but the vtable declares major version 2. */
#include <sluice_sink.h>
static const SluiceSinkVTable VT = { 2, 3, sizeof(SluiceSinkVTable), 0 };
const SluiceSinkVTable *sluice_sink_entry_v1(void) { return &VT; }
