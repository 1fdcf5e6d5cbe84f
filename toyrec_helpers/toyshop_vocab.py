"""The ToyShop's catalogue vocabulary: age bands, regions, themes, categories, brands and
the words its toy titles are made of.

These are the fixed lists the generator (:mod:`toyrec_helpers.toyshop`) draws from; the
datasheet (``data/toyshop/README.md``) describes them. Changing any of them changes the
data set.

Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
"""

from __future__ import annotations

AGE_BANDS = ("0-2", "3-5", "6-8", "9-12", "13+")
REGIONS = ("North", "South", "East", "West", "Central", "Coast")
THEMES = (
    "space", "dinosaurs", "animals", "robots", "ocean", "music", "fantasy", "vehicles",
    "princesses", "superheroes", "nature", "science", "sports", "pirates", "farm",
)  # fmt: skip
# category: (median price USD, age-band weights over AGE_BANDS, typical themes, nouns)
CATEGORIES: dict[str, tuple[float, tuple[float, ...], tuple[str, ...], tuple[str, ...]]] = {
    "Building Sets": (38.0, (0.02, 0.18, 0.40, 0.30, 0.10),
                      ("space", "vehicles", "robots", "pirates", "fantasy"),
                      ("Building Set", "Brick Kit", "Construction Set")),
    "Dolls": (24.0, (0.05, 0.45, 0.35, 0.12, 0.03),
              ("princesses", "fantasy", "music", "animals"),
              ("Doll", "Doll House", "Fashion Doll")),
    "Vehicles & RC": (42.0, (0.05, 0.25, 0.35, 0.25, 0.10),
                      ("vehicles", "space", "superheroes", "sports"),
                      ("RC Car", "Racer", "Truck", "Drone")),
    "Puzzles": (17.0, (0.05, 0.25, 0.30, 0.25, 0.15),
                ("animals", "ocean", "space", "nature", "dinosaurs"),
                ("Puzzle", "Jigsaw", "3D Puzzle")),
    "Board & Card Games": (26.0, (0.00, 0.15, 0.30, 0.30, 0.25),
                           ("fantasy", "pirates", "animals", "sports", "science"),
                           ("Board Game", "Card Game", "Party Game")),
    "Plush": (19.0, (0.35, 0.35, 0.18, 0.08, 0.04),
              ("animals", "dinosaurs", "ocean", "fantasy", "farm"),
              ("Plush", "Cuddle Toy", "Soft Toy")),
    "STEM Kits": (39.0, (0.00, 0.05, 0.35, 0.40, 0.20),
                  ("science", "robots", "space", "nature"),
                  ("Science Kit", "Coding Robot", "Lab Kit", "Circuit Kit")),
    "Arts & Crafts": (16.0, (0.02, 0.30, 0.38, 0.22, 0.08),
                      ("music", "nature", "princesses", "animals", "fantasy"),
                      ("Craft Kit", "Paint Set", "Bead Kit")),
    "Outdoor": (48.0, (0.08, 0.30, 0.32, 0.22, 0.08),
                ("sports", "nature", "pirates", "vehicles"),
                ("Play Tent", "Kite", "Water Blaster", "Scooter")),
    "Action Figures": (21.0, (0.00, 0.20, 0.40, 0.30, 0.10),
                       ("superheroes", "dinosaurs", "robots", "space", "pirates"),
                       ("Action Figure", "Figure Pack", "Battle Set")),
    "Baby & Toddler": (23.0, (0.75, 0.25, 0.00, 0.00, 0.00),
                       ("animals", "music", "farm", "ocean"),
                       ("Stacking Toy", "Activity Gym", "Rattle", "Pull-Along")),
    "Pretend Play": (31.0, (0.10, 0.55, 0.28, 0.06, 0.01),
                     ("farm", "princesses", "vehicles", "animals", "music"),
                     ("Play Kitchen", "Playset", "Dress-Up Set", "Shop Counter")),
}  # fmt: skip
BRANDS = (
    "Brickwise", "Tinker & Co", "Little Oak", "Starforge", "PlayNest", "Wonderloom",
    "Zoomzy", "Puzzlecraft", "Cuddle Cove", "Maple & Moss", "Robo Junction", "Kiddo Labs",
    "Sunny Meadow", "Thinkblocks", "Galaxy Games", "Happy Hatch", "Pebble Toys",
    "Rainbow Ridge", "Blue Whale", "Lumo", "Nimbus Kids", "Toyvana", "Orbit Works",
    "Gigglebox", "Fernwood",
)  # fmt: skip
THEME_WORDS = {
    "space": ("Galaxy", "Rocket", "Astro", "Cosmic", "Lunar"),
    "dinosaurs": ("Dino", "T-Rex", "Raptor", "Jurassic", "Fossil"),
    "animals": ("Safari", "Jungle", "Puppy", "Kitten", "Panda"),
    "robots": ("Robo", "Mech", "Circuit", "Cyber", "Droid"),
    "ocean": ("Ocean", "Coral", "Dolphin", "Reef", "Shark"),
    "music": ("Melody", "Rhythm", "Rockstar", "Piano", "Drum"),
    "fantasy": ("Dragon", "Unicorn", "Wizard", "Enchanted", "Mystic"),
    "vehicles": ("Turbo", "Speedway", "Monster", "Rally", "Express"),
    "princesses": ("Royal", "Princess", "Castle", "Crown", "Ballroom"),
    "superheroes": ("Hero", "Power", "Thunder", "Mighty", "Shield"),
    "nature": ("Forest", "Garden", "Meadow", "Rainbow", "Sunny"),
    "science": ("Genius", "Lab", "Atom", "Crystal", "Volcano"),
    "sports": ("Champion", "Goal", "Slam", "Sprint", "Victory"),
    "pirates": ("Pirate", "Treasure", "Buccaneer", "Anchor", "Skull Island"),
    "farm": ("Barnyard", "Tractor", "Farmhouse", "Harvest", "Pony"),
}
# Regions tilt which themes shoppers favour a little (weakly informative attribute).
REGION_THEME_TILT = {
    "North": ("sports", "nature"), "South": ("animals", "farm"), "East": ("science", "robots"),
    "West": ("fantasy", "music"), "Central": ("vehicles", "superheroes"),
    "Coast": ("ocean", "pirates"),
}  # fmt: skip
