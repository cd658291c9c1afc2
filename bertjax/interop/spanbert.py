"""SpanBERT's checkpoints are plain Hugging Face BERT (``BertModel`` / ``BertForMaskedLM``)."""

import dataclasses

from bertjax.interop import bert

ADAPTER = dataclasses.replace(bert.ADAPTER, family="spanbert")
