"""`replyrank batch`: rank a whole Pushshift dump on Ray Data, on one machine or a cluster.

A month of Reddit is about 100M comments, far more than one process should loop over. This
package hands the work to Ray Data, the pattern its docs give for batch inference: `map_batches`
with a callable class whose `__init__` loads the model once per actor and whose `__call__` maps
a batch to a batch, parallel by the actor pool's size and `num_cpus=` (cores per actor), with
ONNX Runtime's own thread count set to those cores.

A run has three steps, one module each, each committed in pieces so that a killed run started
again with the same command redoes only the piece it was in (`layout` says where each lives):

1. `stage`: each dump into Parquet buckets by thread, one Ray task per dump (a zstd stream cannot
   be split; Parquet can);
2. `select`: per bucket, training's filters and the batch's own, duplicates dropped, replies
   joined to their parents (`--mode score`), written as work shards;
3. `rank` (the actors' `Ranker`) and `pipeline` (the driver's Ray Data pipeline, which commits
   each shard's output file once all its rows are in).

`run` ties them together under a folder lock; `command` is the click command.

`--mode reply` writes a reply to every selected comment (or submission): the pick and every
candidate's scores. `--mode score` ranks the real replies of every parent, as `Bot.score` ranks
replies written elsewhere: which one replyrank would have picked, and each one's realism and
predicted upvotes, next to its real Reddit score: the ranking evaluation at the scale of a dump.

Needs the `batch` extra (`pip install 'replyrank[batch]'`: Ray Data and pyarrow); without it this
package still imports, and the command says how to install it.
"""

from .command import batch
from .layout import RESULTS, WORK
from .options import BatchOptions, Selection
from .rank import Ranker, output_schema, row_seed
from .run import folder_lock, run_batch
from .select import select_bucket
from .stage import stage_dump

__all__ = ["RESULTS", "WORK", "BatchOptions", "Ranker", "Selection", "batch", "folder_lock", "output_schema", "row_seed",
           "run_batch", "select_bucket", "stage_dump"]
