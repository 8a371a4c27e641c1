/* A plugin that needs a function no library defines. Loading it must fail
 * whole, with the loader's reason (symbols resolved up front, RTLD_NOW), not
 * end the process when the function is first called. */
#include <sluice_sink.h>
extern const SluiceSinkVTable *sluice_test_no_such_function(void);
const SluiceSinkVTable *sluice_sink_entry_v1(void) { return sluice_test_no_such_function(); }
