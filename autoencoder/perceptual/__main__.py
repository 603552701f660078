"""python -m autoencoder.perceptual convert --vgg VGG16.pth --lin LIN.pth --out lpips_vgg.pt"""

from .convert import main

main()
