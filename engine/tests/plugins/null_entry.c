/* An entry function that fails. */
#include <sluice_sink.h>
const SluiceSinkVTable *sluice_sink_entry_v1(void) { return 0; }
