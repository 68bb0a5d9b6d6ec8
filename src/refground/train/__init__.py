"""Training: the small SynthRef CLIP (:mod:`.pretrain_clip`); the general Trainer comes later."""
