"""The models as batched forwards: SenseVoiceSmall (SAN-M encoder, batched frontend, packed
layout) and emotion2vec+ large. Each computes funasr's function for a whole batch; how it is
compiled and replayed is the engine's business (workers.runtime)."""
